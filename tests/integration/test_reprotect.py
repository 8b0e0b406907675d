#!/usr/bin/env python3
"""Replace the hardware: a host comes back, the guest is protected again without stopping.

  test_reprotect.py [SCENARIO...]     default: all of them

Scenarios (each in a fresh lab, one client connection talking to the guest
from start to end):
  returning-host   power pulled on the primary; the survivor runs alone and the
                   guest writes W MiB; the old host comes back with its disk:
                   the survivor copies only what changed (bytes moved close to
                   W, far below the disk size) and the pair is protected again
                   with the roles swapped.  Then the same with the other host,
                   and finally the power is pulled on the current primary: the
                   copy made by the resync takes over, nothing lost.  After
                   every power pull the survivor's disk is checked.
                   KVMFT_REPROTECT_CYCLES sets the number of cycles (2).
  blank-host       the same, but the returning host's disk is gone (a
                   replacement): a full copy, then protected, then a power
                   pull on the primary proves the copy.
  role-switch      `ftctl failover` while protected: the roles switch, the
                   new primary re-protects onto the old one (incremental);
                   `ftctl migrate` moves it back the same way; then a power
                   pull on the primary proves the copy.
  link-returns     the dedicated link is cut (the primary runs alone, the
                   secondary stands down) and restored: the primary
                   re-protects by itself, incrementally; a power pull on it
                   proves the copy.
  secondary-dies-mid-resync
                   the returning host loses power again while the survivor
                   copies to it (copy rate capped to make the window wide):
                   the guest carries on alone; when the host returns once
                   more the pair re-protects by itself.
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
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (GUEST, Lab, SeqClient, assert_kernels_clean, check_disk,  # noqa: E402
                     guest_dir, log, qemu_binary, run_all, running_copies, scenarios_asked,
                     wait_for, wait_state)

OTHER = {"hostA": "hostB", "hostB": "hostA"}
MIB = 1 << 20
WRITE_MIB = 8
# Bytes a copy may move beyond the guest's own writes: the filesystem's
# journal and metadata, and what the guest wrote while protected.
SLACK_BYTES = 12 * MIB
CAPPED_MIB_PER_S = 4
# The longest the client may wait for an answer while its guest is re-protected
# (the reference stalled 4 s); the copy and the precopy run with the guest live.
MAX_STALL_MS = 1000
# The client's longest wait over the whole scenario: power pulls (failovers) included.
MAX_SILENCE_MS = 1000
# Power pull / return / re-protect cycles of returning-host (tools/soak runs many).
CYCLES = int(os.environ.get("KVMFT_REPROTECT_CYCLES", "2"))


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


def check_resync(st, mode, written):
    last = st["last_resync"]
    log("last resync on the primary: %s" % last)
    assert last and last["mode"] == mode, "expected a %s copy: %s" % (mode, last)
    # Entering COLO stops the running guest once, for the last precopy pass.
    assert last["entry_pause_ms"] is not None and last["entry_pause_ms"] < MAX_STALL_MS, last
    if mode == "incremental":
        if written is not None:
            assert written * 0.9 <= last["bytes_moved"] <= written + SLACK_BYTES, \
                "moved %d bytes for %d written since the split" % (last["bytes_moved"], written)
        assert last["bytes_moved"] < last["disk_bytes"] / 2, last
    else:
        assert last["bytes_moved"] == last["disk_bytes"], last


def return_host(lab, host, blank=False):
    if blank:
        os.unlink(image(lab, host))
        log("%s's disk removed: it comes back as a blank replacement" % host)
    lab.lab("power-on", host[-1])


def reprotected(lab, primary, mode, written, since):
    """Waits for the pair to be protected again; checks the copy and the client's
    longest wait since the host came back (`since`)."""
    st = wait_protected(lab, primary)
    check_resync(st, mode, written)
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
    assert summary["max_silence_ms"] < MAX_SILENCE_MS, \
        "the client waited %.0f ms for an answer (bound %d ms)" % (summary["max_silence_ms"],
                                                                   MAX_SILENCE_MS)
    for since, until in lab.reprotect_windows:
        wait = longest_wait_ms(lab.client_log, since, until)
        log("longest wait for an answer while re-protecting: %.0f ms" % wait)
        assert wait < MAX_STALL_MS, "the client waited %.0f ms while the guest was " \
            "re-protected" % wait
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
        survivor = power_pull(lab, primary)
        check_survivor_disk(lab, survivor)
        written = guest_write(lab, WRITE_MIB)
        since = time.time()
        return_host(lab, primary, blank=blank)
        reprotected(lab, survivor, "full" if blank else "incremental", written, since)
        log("cycle %d: protected again, %s primary" % (cycle + 1, survivor))
        primary = survivor
        time.sleep(3)
    return power_pull(lab, primary)


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


def scenario_mid_resync(lab):
    survivor = power_pull(lab, "hostA")
    set_rate_cap(lab, survivor, CAPPED_MIB_PER_S)
    wait_state(lab, survivor, "degraded", timeout=30)
    return_host(lab, "hostA", blank=True)
    st = wait_state(lab, survivor, "resyncing", timeout=120)
    log("copy under way: %s" % st["resync"])
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


SCENARIOS = {
    "returning-host": scenario_returning_host,
    "blank-host": lambda lab: scenario_returning_host(lab, blank=True),
    "role-switch": scenario_role_switch,
    "link-returns": scenario_link_returns,
    "secondary-dies-mid-resync": scenario_mid_resync,
    "survivor-dies-mid-resync": scenario_survivor_dies_mid_resync,
}


def run_scenario(name, qemu, gdir):
    lab = Lab("test_reprotect-" + name)
    try:
        lab.up()
        lab.install_guest(qemu, gdir)
        res = lab.protect("hostA")
        assert res.returncode == 0, "protect failed: %s" % res.stderr
        wait_state(lab, "hostB", "protected", timeout=60)
        wait_for("guest up", lambda: "GUEST UP" in lab.serial("hostA"), timeout=120)
        lab.client_log = os.path.join(lab.artifacts, "client.jsonl")
        lab.reprotect_windows = []
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
