#!/usr/bin/env python3
"""Replace the hardware: a host comes back, the guest is protected again without stopping.

  test_reprotect.py [SCENARIO...]     default: all of them

Scenarios (each in a fresh lab, one client connection talking to the guest
from start to end):
  returning-host   power pulled on the secondary; the primary runs alone and the
                   guest writes W MiB; the secondary's host comes back with its
                   disk: the primary copies only what changed (bytes moved close
                   to W, far below the disk size).  Then the power is pulled on
                   the primary: the survivor copies the whole disk to it when
                   it returns (a primary that did not close its disks may hold
                   writes no one tracked; see crashed-primary), with the roles
                   swapped.  Cycles alternate the two; finally the power is
                   pulled on the current primary: the copy made by the resync
                   takes over, nothing lost.  After every power pull the
                   survivor's disk is checked.  KVMFT_REPROTECT_CYCLES sets the
                   number of cycles (2).
  crashed-primary  the primary dies with guest writes under way that reached
                   its own disk and not the secondary's (its writes to the
                   secondary's disk are dropped on the link for a second, then
                   its power is pulled); the guest runs on on the survivor,
                   whose copy of the request writes other blocks.  When the old
                   primary returns, the survivor copies the whole disk to it;
                   then the guest is shut down and the two disk images, closed,
                   must be identical (qemu-img compare); the guest starts again
                   protected, with nothing to copy.  KVMFT_CRASH_CYCLES cycles
                   (1), alternating the hosts.
  blank-host       the same, but the returning host's disk is gone (a
                   replacement): a full copy, then protected, then a power
                   pull on the primary proves the copy.
  disk-port-blocked
                   the secondary's host loses power and comes back with a
                   firewall that drops its NBD port: the primary's kvm-ftd
                   finds the disk server silent with a connection of its own
                   and says so, instead of letting QEMU connect (QEMU's main
                   loop would wait minutes on it); the guest and kvm-ftd never
                   stall; once the rule goes, the pair re-protects by itself.
  role-switch      `ftctl failover` while protected: the roles switch, the
                   new primary re-protects onto the old one (incremental);
                   `ftctl migrate` moves it back the same way; then a power
                   pull on the primary proves the copy.
  role-switch-frozen  `ftctl failover` while the primary's QEMU is frozen
                   (SIGSTOP): it cannot quit, so after 10 s libvirt destroys
                   it (SIGTERM, then SIGKILL); kvm-ftd waits for neither (its
                   failure detector is never a second late), then hostB takes
                   over and re-protects onto hostA (a whole copy: hostA's
                   QEMU was killed); a power pull on hostB proves the copy.
  link-returns     the dedicated link is cut (the primary runs alone, the
                   secondary stands down) and restored: the primary
                   re-protects by itself, incrementally; a power pull on it
                   proves the copy.
  secondary-dies-mid-resync
                   the returning host loses power again while the survivor
                   copies to it (copy rate capped to make the window wide):
                   the guest carries on alone; when the host returns once
                   more the pair re-protects by itself.
  daemon-restarts-mid-resync
                   the returning host's kvm-ftd is killed and started again
                   while its secondary waits for the survivor's copy: from its
                   journal the restarted daemon knows that QEMU for a secondary
                   that never ran the guest, not a guest running alone, and
                   stops it; the survivor gives the copy up and re-protects.
  survivor-daemon-restarts-mid-resync
                   the same on the survivor: its kvm-ftd is killed and started
                   again while it copies; from its journal it undoes the
                   re-protection under way (the copy's jobs and nodes, the
                   COLO objects, the peer's waiting secondary) while the guest
                   runs on, and the next attempt protects it again.
  secondary-dies-entering-colo
                   the returning host loses power while the survivor enters
                   COLO with it (the first RAM sync, the guest paused for the
                   switch-over): the survivor leaves the attempt and runs the
                   guest on, never left paused; when the host returns once
                   more the pair re-protects.
  secondary-dies-after-switch-over
                   the same, the power pulled as soon as the survivor begins
                   the switch-over (its log says so): from there the guest's
                   output waits for the secondary (colo-compare), through the
                   pause, the first checkpoint and the end of the disk copy;
                   the survivor finds the secondary dead as fast as in COLO
                   and runs on alone.
  secondary-dies-connecting
                   the same, the power pulled as soon as the survivor begins
                   to connect the replication (its log says so): QEMU opens
                   the NBD connection with its main loop held; the open gives
                   up within its timeout (1 s, the client may wait that much
                   longer), the survivor runs on alone and re-protects later.
  survivor-daemon-restarts-entering-colo
                   the survivor's kvm-ftd is killed and started again while it
                   enters COLO: from its journal it undoes the attempt (the
                   guest resumed if it was paused for the switch-over) and the
                   next attempt protects the guest again.
  survivor-dies-mid-resync
                   the survivor, the guest's only copy, loses power while it
                   copies to the returning host (the client is stopped first:
                   nothing can keep its connection): the returning host's
                   secondary gives up by itself, its half-copied disks are
                   refused as the guest ("cut short"), and the guest starts
                   protected from the survivor's disks when it is back.

Every scenario asserts: the client's sequence is gapless and never rewound
on one TCP connection; exactly one copy runs outside COLO's secondary role
after every fault; the final survivor's disk is e2fsck-clean with a gapless
on-disk log; its guest kernel log is clean; while the guest was being
re-protected, the client never waited MAX_STALL_MS or more for an answer and
entering COLO stopped the guest for less than that.
"""
import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (GUEST, LINK, TOOLS, WRITER_PORT, ClientProcess, Lab, SeqClient,  # noqa: E402
                     assert_kernels_clean, check_disk, generation, generation_mark, guest_dir,
                     log, longest_wait, qemu_binary, run, run_all, running_copies, scenarios_asked,
                     wait_for, wait_log_line, wait_state)

OTHER = {"hostA": "hostB", "hostB": "hostA"}
MIB = 1 << 20
WRITE_MIB = 8
# Bytes a copy may move beyond the guest's own writes: the filesystem's
# journal and metadata, and what the guest wrote while protected.
SLACK_BYTES = 12 * MIB
# The same when the copy tracks only the outage: journal and metadata (64 KiB granules).
OUTAGE_SLACK_BYTES = 2 * MIB
CAPPED_MIB_PER_S = 4
# The longest the client may wait for an answer while its guest is re-protected
# (the reference stalled 4 s); the copy and the precopy run with the guest live.
MAX_STALL_MS = 1000
# The client's longest wait over the whole scenario: power pulls (failovers) included.
MAX_SILENCE_MS = 1000
# A secondary that dies while the survivor's QEMU opens an NBD connection to it holds
# QEMU's main loop, and the guest, until the open times out (kvm-ft/timeouts.h,
# NBD_OPEN_TIMEOUT_S): secondary-dies-connecting may wait that much longer.
NBD_OPEN_TIMEOUT_MS = 1000
# How long the copy a given-up attempt started on the other host may take to go: libvirt's
# destroy waits for SIGTERM first, seconds at most.
COPY_GONE_S = 10
# Power pull / return / re-protect cycles of returning-host (tools/soak runs many).
CYCLES = int(os.environ.get("KVMFT_REPROTECT_CYCLES", "2"))
# crashed-primary: its cycles, the blocks the guest writes in each, and how long the
# primary's writes to the secondary's disk are held before its power is pulled.
CRASH_CYCLES = int(os.environ.get("KVMFT_CRASH_CYCLES", "1"))
POKE_BLOCKS = 16
HOLD_WRITES_S = 1.0
PORT_BASE = 9100  # the lab's guests use the default <ft:ports base>


def image(lab, host):
    return lab.path(host, "/var/lib/libvirt/images/%s.qcow2" % GUEST)


def guest_write(lab, mib):
    """Writes mib MiB of fresh data to the guest's disk, from inside the guest."""
    return lab.guest_write(mib)["bytes_written"]


def power_pull(lab, host):
    lab.lab("power-off", host[-1])
    survivor = OTHER[host]
    st = wait_state(lab, survivor, "degraded", timeout=60)
    assert running_copies(lab) == [survivor], running_copies(lab)
    log("power pulled on %s; %s runs alone: %s" % (host, survivor, st["last_failover"]))
    return survivor


def wait_protected(lab, primary, timeout=300):
    """Both hosts protected, primary where expected; returns the primary's status."""
    st = wait_state(lab, primary, "protected", timeout=timeout)
    assert st["role"] == "primary", st
    sec = wait_state(lab, OTHER[primary], "protected", timeout=60)
    assert sec["role"] == "secondary", sec
    return st


def check_resync(st, mode, written, slack=SLACK_BYTES):
    last = st["last_resync"]
    log("last resync on the primary: %s" % last)
    assert last and last["mode"] == mode, "expected a %s copy: %s" % (mode, last)
    # Entering COLO stops the running guest once, for the last precopy pass.
    assert last["entry_pause_ms"] is not None and last["entry_pause_ms"] < MAX_STALL_MS, last
    if mode == "incremental":
        if written is not None:
            assert written * 0.9 <= last["bytes_moved"] <= written + slack, \
                "moved %d bytes for %d written since the split" % (last["bytes_moved"], written)
        assert last["bytes_moved"] < last["disk_bytes"] / 2, last
    else:
        assert last["bytes_moved"] == last["disk_bytes"], last


def return_host(lab, host, blank=False):
    if blank:
        os.unlink(image(lab, host))
        log("%s's disk removed: it comes back as a blank replacement" % host)
    lab.lab("power-on", host[-1])


def reprotected(lab, primary, mode, written, since, slack=SLACK_BYTES):
    """Waits for the pair to be protected again; checks the copy and the client's
    longest wait since the host came back (`since`)."""
    st = wait_protected(lab, primary)
    check_resync(st, mode, written, slack)
    lab.reprotect_windows.append((since, time.time()))
    return st


def set_rate_cap(lab, host, mib_per_s):
    """Caps the disk copy on host's kvm-ftd (restarted to read it; its guest runs on)."""
    conf = lab.path(host, "/etc/kvm-ft/kvm-ftd.conf")
    with open(conf, "a") as f:
        f.write("\n[resync]\nrate-mb-per-s = %d\n" % mib_per_s)
    lab.lab("daemon-kill", host[-1])
    lab.lab("daemon-start", host[-1])


def longest_wait_ms(client_log, since, until):
    """The client's longest time without an answer between since and until."""
    stamps = [json.loads(line)["t"] for line in open(client_log)]
    inside = [since] + [t for t in stamps if since <= t <= until] + [until]
    return max(b - a for a, b in zip(inside, inside[1:])) * 1000


def finish(lab, survivor):
    summary = lab.client_summary or lab.seq_client.stop()
    lab.seq_client = None
    log("client: %s" % summary)
    assert summary["connection_broken"] is None, "connection broke: %s" % summary
    assert not summary["gaps"] and not summary["repeats"] and not summary["rewinds"], summary
    assert summary["max_silence_ms"] < MAX_SILENCE_MS + lab.extra_wait_ms, \
        "the client waited %.0f ms for an answer (bound %d ms): %s" % (
            summary["max_silence_ms"], MAX_SILENCE_MS + lab.extra_wait_ms,
            longest_wait(lab.client_log))
    for since, until in lab.reprotect_windows:
        wait = longest_wait_ms(lab.client_log, since, until)
        log("longest wait for an answer while re-protecting: %.0f ms" % wait)
        assert wait < MAX_STALL_MS + lab.extra_wait_ms, "the client waited %.0f ms while " \
            "the guest was re-protected" % wait
    ok, disk = check_disk(lab, survivor)
    log("survivor %s's disk: %s" % (survivor, disk))
    assert ok, "survivor's disk not clean and gapless: %s" % disk
    assert_kernels_clean(lab, (survivor,))


def check_survivor_disk(lab, host):
    """The running survivor's disk, read as it is (e2fsck -n): clean, gapless log."""
    ok, disk = check_disk(lab, host)
    assert ok, "survivor %s's disk not clean and gapless: %s" % (host, disk)


def scenario_returning_host(lab, blank=False):
    primary = "hostA"
    for cycle in range(1 if blank else CYCLES):
        # A returning secondary lacks only what was written without it.
        victim = primary if blank or cycle % 2 else OTHER[primary]
        incremental = victim != primary and not blank
        if incremental:
            # Written while protected: on both copies, so not the returning host's to get.
            guest_write(lab, WRITE_MIB)
        survivor = power_pull(lab, victim)
        check_survivor_disk(lab, survivor)
        written = guest_write(lab, WRITE_MIB)
        since = time.time()
        return_host(lab, victim, blank=blank)
        st = reprotected(lab, survivor, "incremental" if incremental else "full", written,
                         since, slack=OUTAGE_SLACK_BYTES)
        if incremental:
            assert st["last_resync"]["since"] == "split", st["last_resync"]
        log("cycle %d: protected again after a power pull on the %s, %s primary" %
            (cycle + 1, "primary" if victim == primary else "secondary", survivor))
        primary = survivor
        time.sleep(3)
    return power_pull(lab, primary)


def disk_writes_rule(lab, primary, action):
    """On the primary's host, its writes to the secondary's disks (NBD, base + 1) are dropped
    on the link (action "-I"; "-D" ends it): the guest's writes complete on the primary's
    disks and wait for the other's."""
    lab.lab("exec", primary[-1], "iptables", action, "OUTPUT", "-p", "tcp", "-d",
            LINK[OTHER[primary]], "--dport", str(PORT_BASE + 1), "-j", "DROP")


def images_identical(lab, rel, fmt):
    """Both hosts' images of one of the guest's disks, closed: qemu-img compare (guest-visible
    contents).  Returns (identical, what qemu-img said)."""
    res = run("qemu-img", "compare", "-f", fmt, "-F", fmt, lab.path("hostA", rel),
              lab.path("hostB", rel), check=False)
    return res.returncode == 0, (res.stdout + res.stderr).strip()


def shut_down_and_compare(lab, primary):
    lab.virsh(primary, "shutdown", GUEST)
    for host in ("hostA", "hostB"):
        wait_state(lab, host, "stopped", timeout=60)
        wait_for("%s shut off on %s" % (GUEST, host), lambda h=host: lab.virsh(
            h, "domstate", GUEST, check=False).stdout.strip() == "shut off", timeout=30)
    for rel, fmt in (("/var/lib/libvirt/images/%s.qcow2" % GUEST, "qcow2"),
                     (lab.data_disk, "raw")):
        same, said = images_identical(lab, rel, fmt)
        log("%s on both hosts, closed; qemu-img compare: %s" % (rel, said))
        assert same, "the two copies of %s differ after the re-protection: %s" % (rel, said)


def booted_since(console, before):
    """The console log written since `before` (libvirt may have started a new file)."""
    return console[len(before):] if console.startswith(before) else console


def scenario_crashed_primary(lab):
    primary = "hostA"
    stop_client(lab)  # each cycle shuts the guest down: no connection lives through that
    for cycle in range(CRASH_CYCLES):
        # A booting secondary may not listen yet where its primary accepts the client, and
        # with the writes held no checkpoint can bring it level: two checkpoints first.
        seen = lab.status(primary)["checkpoints"]
        wait_for("two checkpoints on %s" % primary,
                 lambda: lab.status(primary)["checkpoints"] >= seen + 2, timeout=30)
        # Onto vdb, raw: no filesystem journal for the writes to wait behind.
        disk_writes_rule(lab, primary, "-I")
        poke = ClientProcess(lab, ["python3", os.path.join(TOOLS, "guestwrite"), "--poke",
                                   str(POKE_BLOCKS), "--port", str(WRITER_PORT["vdb"])],
                             "guestwrite --poke")
        time.sleep(HOLD_WRITES_S)
        survivor = power_pull(lab, primary)
        out = poke.result(timeout=180)
        assert out.get("poked") == POKE_BLOCKS, "the survivor did not finish the writes: %s" % out
        return_host(lab, primary)
        # A host that lost power comes back without the rule (the lab's namespace kept it);
        # as the secondary it sends nothing to that port.
        disk_writes_rule(lab, primary, "-D")
        # Not reprotected(): no client runs to measure the stall with.
        st = wait_protected(lab, survivor)
        check_resync(st, "full", None)
        assert generation_mark(lab, survivor) == "primary", generation_mark(lab, survivor)
        log("cycle %d: %s copied the whole disk to the returning primary (%s)" %
            (cycle + 1, survivor, st["last_resync"]))
        shut_down_and_compare(lab, survivor)
        # Both closed cleanly: the next protection trusts the disks as they are.
        copied_before = lab.status(survivor)["last_resync"]
        console = lab.serial(survivor)
        res = lab.protect(survivor)
        assert res.returncode == 0, "protect on %s failed: %s" % (survivor, res.stderr)
        st = wait_protected(lab, survivor)
        # The guest's entry may be new (no last copy) or the one that made the last copy.
        assert st["last_resync"] in (None, copied_before), \
            "a disk copy after a clean shutdown: %s" % st["last_resync"]
        wait_for("the guest to boot again on %s" % survivor,
                 lambda: "GUEST UP" in booted_since(lab.serial(survivor), console), timeout=180)
        primary = survivor
    return primary


def late_detector_rounds(lab, host, since):
    """The rounds host's failure detector ran late by a second or more after `since`."""
    return [line for line in lab.daemon_log_since(host, since)
            if (m := re.search(r"failure detection ran (\d+) ms late", line)) and
            int(m.group(1)) >= 1000]


def scenario_disk_port_blocked(lab):
    survivor = power_pull(lab, "hostB")
    rule = ["INPUT", "-p", "tcp", "--dport", str(PORT_BASE + 1), "-j", "DROP"]
    run("ip", "netns", "exec", lab.netns("hostB"), "iptables", "-I", *rule)
    since = time.time()
    return_host(lab, "hostB")
    st = wait_for("%s to give up on hostB's silent disk server" % survivor,
                  lambda: (lab.status(survivor) or {}).get("error") and
                  "disk server does not answer" in lab.status(survivor)["error"] and
                  lab.status(survivor), timeout=90)
    log("%s: %s" % (survivor, st["error"]))
    assert st["state"] in ("degraded", "rejoining"), st
    assert running_copies(lab) == [survivor], running_copies(lab)
    # A second attempt, and kvm-ftd answering all along.
    wait_for("a second attempt", lambda: lab.daemon_log(survivor).count(
        "disk server does not answer") >= 2, timeout=60)
    late = late_detector_rounds(lab, survivor, since)
    assert not late, "kvm-ftd stalled while the disk server was silent:\n%s" % "\n".join(late)
    run("ip", "netns", "exec", lab.netns("hostB"), "iptables", "-D", *rule)
    since = time.time()
    reprotected(lab, survivor, "incremental", None, since)
    time.sleep(3)
    return power_pull(lab, survivor)


def scenario_role_switch(lab):
    # Written while protected: must be on the old primary after the switch too.
    guest_write(lab, WRITE_MIB)
    since = time.time()
    res = lab.ftctl("hostA", "failover", GUEST, "--timeout-s", "240", check=False)
    log("ftctl failover: rc=%d\n%s%s" % (res.returncode, res.stdout, res.stderr))
    assert res.returncode == 0, res.stderr
    # The old primary lacks at most what was written since the pair was last in sync.
    reprotected(lab, "hostB", "incremental", None, since)
    time.sleep(3)
    # And back, as the one-command move to (replaced) hardware, run where it runs.
    since = time.time()
    res = lab.ftctl("hostB", "migrate", GUEST, "hostA", "--timeout-s", "240", check=False)
    log("ftctl migrate: rc=%d\n%s%s" % (res.returncode, res.stdout, res.stderr))
    assert res.returncode == 0, res.stderr
    reprotected(lab, "hostA", "incremental", None, since)
    res = lab.ftctl("hostB", "migrate", GUEST, "hostA", check=False)
    assert res.returncode == 0, "migrate to where it runs: %d %s" % (res.returncode, res.stderr)
    res = lab.ftctl("hostB", "migrate", GUEST, "hostB", check=False)
    assert res.returncode == 1 and "hostA" in res.stderr, \
        "migrate run where the guest does not run: %d %s" % (res.returncode, res.stderr)
    res = lab.ftctl("hostA", "migrate", GUEST, "hostC", check=False)
    assert res.returncode == 2, "migrate to a host outside the pair: %d %s" % (res.returncode,
                                                                              res.stderr)
    time.sleep(3)
    return power_pull(lab, "hostA")


# role-switch-frozen: the frozen primary's output is held while QEMU is asked to quit (10 s)
# and libvirt destroys it (its SIGTERM waits 10 s, then SIGKILL), then the client's TCP
# retries when its backed-off timer says (~25 s after its request, or ~51 s).
FROZEN_HANDOVER_EXTRA_MS = 60000


def scenario_role_switch_frozen(lab):
    with open(lab.path("hostA", "/run/libvirt/qemu/%s.pid" % GUEST)) as f:
        pid = int(f.read().strip())
    since = time.time()
    os.kill(pid, signal.SIGSTOP)
    log("hostA's QEMU (pid %d) frozen; asking for a planned failover" % pid)
    res = lab.ftctl("hostA", "failover", GUEST, "--timeout-s", "240", check=False)
    log("ftctl failover: rc=%d\n%s%s" % (res.returncode, res.stdout, res.stderr))
    assert res.returncode == 0, res.stderr
    lab.extra_wait_ms = FROZEN_HANDOVER_EXTRA_MS
    said = lab.daemon_log_since("hostA", since)
    assert any("did not quit within" in line for line in said), \
        "hostA's frozen QEMU quit by itself?\n%s" % "\n".join(said[-20:])
    # Killed, not quit: hostA's disks may hold writes hostB lacks, so the copy is whole.
    reprotected(lab, "hostB", "full", None, since)
    late = late_detector_rounds(lab, "hostA", since)
    assert not late, "kvm-ftd on hostA waited on its frozen QEMU or on libvirt:\n%s" % \
        "\n".join(late)
    time.sleep(3)
    return power_pull(lab, "hostB")


def scenario_link_returns(lab):
    lab.lab("cut-link")
    st = wait_state(lab, "hostA", "degraded", timeout=60)
    wait_state(lab, "hostB", "stopped", timeout=60)
    assert running_copies(lab) == ["hostA"], running_copies(lab)
    log("dedicated link cut: hostA runs alone (%s), hostB stood down" % st["last_failover"])
    written = guest_write(lab, WRITE_MIB)
    since = time.time()
    lab.lab("restore-link")
    reprotected(lab, "hostA", "incremental", written, since)
    time.sleep(3)
    return power_pull(lab, "hostA")


def slow_copy_to_blank_host_a(lab):
    """hostA's power pulled; it comes back blank and the survivor copies to it,
    rate-capped to widen the window.  Returns the survivor, copying: bytes moved, so its
    QEMU has connected to hostA's disks (a death while it connects is another scenario,
    secondary-dies-connecting, with its own bound)."""
    survivor = power_pull(lab, "hostA")
    set_rate_cap(lab, survivor, CAPPED_MIB_PER_S)
    wait_state(lab, survivor, "degraded", timeout=30)
    return_host(lab, "hostA", blank=True)
    wait_state(lab, survivor, "resyncing", timeout=120)

    def moving():
        st = lab.status(survivor)
        return st if st and st["state"] == "resyncing" and (st["resync"] or {}).get("bytes_done") \
            else None
    st = wait_for("the copy to move data", moving, timeout=60)
    log("copy under way: %s" % st["resync"])
    return survivor


def scenario_mid_resync(lab):
    survivor = slow_copy_to_blank_host_a(lab)
    lab.lab("power-off", "A")
    st = wait_state(lab, survivor, "degraded", timeout=60)
    assert "re-protection failed" in (st["error"] or ""), st
    assert running_copies(lab) == [survivor], running_copies(lab)
    log("the copy was given up: %s" % st["error"])
    since = time.time()
    return_host(lab, "hostA")
    reprotected(lab, survivor, "full", 0, since)
    time.sleep(3)
    return power_pull(lab, survivor)


def restart_daemon(lab, host):
    """SIGKILLs host's kvm-ftd and starts it again; returns the log line in which the
    restarted daemon says what it made of the QEMU it found running: its transition out
    of re-attaching (a stopped guest's status is made anew from its definition, without
    the reason)."""
    since = time.time()
    lab.lab("daemon-kill", host[-1])
    lab.lab("daemon-start", host[-1])
    # Its first transition, into re-attaching, says only that it connects to that QEMU.
    said = wait_for("%s's restarted kvm-ftd to take up the QEMU it found running" % host,
                    lambda: [l for l in lab.daemon_log_since(host, since)
                             if "re-attaching -> " in l], timeout=60)
    log("%s: %s" % (host, said[0]))
    return said[0]


def scenario_daemon_restarts_mid_resync(lab):
    survivor = slow_copy_to_blank_host_a(lab)
    sec = lab.status("hostA")
    assert sec and sec["role"] == "secondary", sec
    said = restart_daemon(lab, "hostA")
    assert running_copies(lab) == [survivor], running_copies(lab)
    assert "never ran the guest" in said, said
    st = wait_state(lab, survivor, "degraded", timeout=60)
    log("the copy was given up: %s" % st["error"])
    since = time.time()
    reprotected(lab, survivor, "full", 0, since)
    time.sleep(3)
    return power_pull(lab, survivor)


def scenario_survivor_daemon_restarts_mid_resync(lab):
    survivor = slow_copy_to_blank_host_a(lab)
    said = restart_daemon(lab, survivor)
    assert "re-protection failed" in said, said
    assert running_copies(lab) == [survivor], running_copies(lab)
    # The waiting secondary was told to go: nothing holds the next attempt back.
    since = time.time()
    reprotected(lab, survivor, "full", 0, since)
    time.sleep(3)
    return power_pull(lab, survivor)


def entering_colo(lab):
    """hostA's power pulled; when it returns, waits (polling the survivor's control
    socket, which answers in a millisecond) until the survivor enters COLO with it.
    Returns the survivor, in entering-colo."""
    survivor = power_pull(lab, "hostA")
    wait_state(lab, survivor, "degraded", timeout=30)
    return_host(lab, "hostA")
    deadline = time.time() + 180
    while time.time() < deadline:
        guests = lab.control(survivor, {"command": "status", "guest": GUEST})["guests"]
        if guests and guests[0]["state"] == "entering-colo":
            log("%s enters COLO" % survivor)
            return survivor
        if guests and guests[0]["state"] == "protected":
            raise AssertionError("%s was protected before the poll saw entering-colo" %
                                 survivor)
        time.sleep(0.01)
    raise AssertionError("%s never entered COLO" % survivor)


def assert_runs_alone_unpaused(lab, survivor, since):
    """After an attempt to enter COLO was cut short: one copy, running (not paused for
    the switch-over), and the client answered again soon."""
    st = wait_state(lab, survivor, "degraded", timeout=60)
    # The other host's secondary QEMU, never in COLO, may still be on its way out: libvirt
    # took 1.2 s to reap one that had exited by itself (a full check, 16:56:04-06).
    wait_for("only %s running the guest" % survivor,
             lambda: running_copies(lab) == [survivor], timeout=COPY_GONE_S)
    state = lab.virsh(survivor, "domstate", GUEST).stdout.strip()
    assert state == "running", "the guest is %s on %s after the attempt was given up" % (
        state, survivor)
    log("the attempt was given up: %s" % st["error"])
    lab.reprotect_windows.append((since, time.time()))


def reprotect_and_pull(lab, survivor, mode="incremental"):
    """hostA returns, the survivor re-protects onto it, then loses its own power."""
    since = time.time()
    return_host(lab, "hostA")
    reprotected(lab, survivor, mode, None, since)
    time.sleep(3)
    return power_pull(lab, survivor)


def scenario_secondary_dies_entering_colo(lab):
    survivor = entering_colo(lab)
    since = time.time()
    lab.lab("power-off", "A")
    assert_runs_alone_unpaused(lab, survivor, since)
    return reprotect_and_pull(lab, survivor)


def pull_returning_host_at(lab, line, what):
    """hostA's power pulled; when it returns, its power is pulled again as soon as the
    survivor's log says `line`.  Returns the survivor and the time of the second pull."""
    survivor = power_pull(lab, "hostA")
    wait_state(lab, survivor, "degraded", timeout=30)
    daemon_log = lab.path(survivor, "/var/log/kvm-ft/kvm-ftd.log")
    offset = os.path.getsize(daemon_log)
    return_host(lab, "hostA")
    wait_log_line(daemon_log, offset, line, 180)
    since = time.time()
    lab.lab("power-off", "A")
    log("hostA's power pulled %.0f ms after the survivor began %s" %
        ((time.time() - since) * 1000, what))
    return survivor, since


def scenario_secondary_dies_after_switch_over(lab):
    # The guest is paused for the switch-over, then runs with colo-compare holding its
    # output for the secondary; the first checkpoint and the copy's end are still to come.
    survivor, since = pull_returning_host_at(lab, "switching over to COLO", "the switch-over")
    assert_runs_alone_unpaused(lab, survivor, since)
    # The pull may come after the survivor entered COLO but before hostA's kvm-ftd saw it
    # and recorded the new protection: hostA's disks then lack what went to its overlays
    # in between, and only a whole copy is safe.
    ours, theirs = generation(lab, survivor)[0], generation(lab, "hostA")[0]
    mode = "incremental" if ours == theirs else "full"
    log("generations: %s %s, hostA %s: the next copy must be %s" % (survivor, ours, theirs,
                                                                      mode))
    return reprotect_and_pull(lab, survivor, mode)


def scenario_secondary_dies_connecting(lab):
    # The copy is done; QEMU opens the replication's NBD connection to hostA next, and
    # holds its main loop while it does.
    survivor, since = pull_returning_host_at(lab, "connecting the replication to",
                                             "connecting the replication")
    lab.extra_wait_ms = NBD_OPEN_TIMEOUT_MS
    assert_runs_alone_unpaused(lab, survivor, since)
    return reprotect_and_pull(lab, survivor)


def scenario_survivor_daemon_restarts_entering_colo(lab):
    survivor = entering_colo(lab)
    since = time.time()
    said = restart_daemon(lab, survivor)
    assert "re-protection" in said, said
    assert_runs_alone_unpaused(lab, survivor, since)
    since = time.time()
    reprotected(lab, survivor, "incremental", None, since)
    time.sleep(3)
    return power_pull(lab, survivor)


def stop_client(lab):
    """Ends the client's connection now; finish() checks what it saw."""
    lab.client_summary = lab.seq_client.stop()
    lab.seq_client = None


def scenario_survivor_dies_mid_resync(lab):
    survivor = power_pull(lab, "hostA")
    set_rate_cap(lab, survivor, CAPPED_MIB_PER_S)
    wait_state(lab, survivor, "degraded", timeout=30)
    guest_write(lab, 2 * WRITE_MIB)
    return_host(lab, "hostA")
    st = wait_state(lab, survivor, "resyncing", timeout=120)
    log("copy under way: %s" % st["resync"])
    # The guest's only copy dies: nothing can keep the client's connection.
    stop_client(lab)
    lab.lab("power-off", "B")
    st = wait_state(lab, "hostA", "stopped", timeout=60)
    log("hostA's secondary gave up: %s" % st["error"])
    lab.lab("power-on", "B")
    # hostA's disks are a copy cut short: they must never become the guest.
    res = lab.protect("hostA", timeout_s=120)
    said = res.stdout + res.stderr + ((lab.status("hostA") or {}).get("error") or "")
    assert res.returncode != 0 and "cut short" in said, "hostA protected from a half copy"
    assert running_copies(lab) == [], running_copies(lab)
    # Nothing half-prepared is left: the secondary hostA asked for is stopped again.
    wait_state(lab, "hostB", "stopped", timeout=30)
    # hostB's disks hold the guest: it starts there and copies to hostA again.
    console_before = len(lab.serial("hostB"))
    res = lab.protect("hostB")
    assert res.returncode == 0, "protect on hostB failed: %s" % res.stderr
    st = wait_protected(lab, "hostB")
    log("protected again from hostB: %s" % st["last_resync"])
    assert st["last_resync"] and st["last_resync"]["mode"] in ("incremental", "full"), st
    wait_for("the guest to boot on hostB",
             lambda: "GUEST UP" in lab.serial("hostB")[console_before:], timeout=180)
    return "hostB"


# crashed-primary shuts the guest down (`virsh shutdown` needs ACPI) and pokes a raw disk.
INSTALL = {"crashed-primary": {"acpi": True, "data_disk": "raw", "workload": "raw2"}}

SCENARIOS = {
    "returning-host": scenario_returning_host,
    "blank-host": lambda lab: scenario_returning_host(lab, blank=True),
    "crashed-primary": scenario_crashed_primary,
    "disk-port-blocked": scenario_disk_port_blocked,
    "role-switch": scenario_role_switch,
    "role-switch-frozen": scenario_role_switch_frozen,
    "link-returns": scenario_link_returns,
    "secondary-dies-mid-resync": scenario_mid_resync,
    "daemon-restarts-mid-resync": scenario_daemon_restarts_mid_resync,
    "survivor-daemon-restarts-mid-resync": scenario_survivor_daemon_restarts_mid_resync,
    "survivor-dies-mid-resync": scenario_survivor_dies_mid_resync,
    "secondary-dies-entering-colo": scenario_secondary_dies_entering_colo,
    "secondary-dies-after-switch-over": scenario_secondary_dies_after_switch_over,
    "secondary-dies-connecting": scenario_secondary_dies_connecting,
    "survivor-daemon-restarts-entering-colo": scenario_survivor_daemon_restarts_entering_colo,
}


def run_scenario(name, qemu, gdir):
    lab = Lab("test_reprotect-" + name)
    try:
        lab.up()
        lab.install_guest(qemu, gdir, **INSTALL.get(name, {}))
        res = lab.protect("hostA")
        assert res.returncode == 0, "protect failed: %s" % res.stderr
        wait_state(lab, "hostB", "protected", timeout=60)
        wait_for("guest up", lambda: "GUEST UP" in lab.serial("hostA"), timeout=120)
        lab.client_log = os.path.join(lab.artifacts, "client.jsonl")
        lab.reprotect_windows = []
        lab.extra_wait_ms = 0
        lab.client_summary = None
        lab.seq_client = SeqClient(lab, seconds=0, log_path=lab.client_log)
        time.sleep(3)
        survivor = SCENARIOS[name](lab)
        time.sleep(3)
        finish(lab, survivor)
        log("PASS %s" % name)
    finally:
        if getattr(lab, "seq_client", None):
            lab.seq_client.stop()
        lab.down()


def main():
    wanted = scenarios_asked(SCENARIOS)
    qemu, gdir = qemu_binary(), guest_dir()
    run_all(wanted, lambda name: run_scenario(name, qemu, gdir))


if __name__ == "__main__":
    main()
