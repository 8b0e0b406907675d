#!/usr/bin/env python3
"""The witness decides every solo run: never two live copies under any partition.

  test_witness.py [SCENARIO...]     default: all of them

The lab gets a witness host (tools/lab up --witness: Debian's etcd in its own
namespace on the LAN).  Cuts are made as a switch fails: packets vanish,
carriers stay.  Scenarios (each in a fresh lab, one client connection
talking to the guest throughout):
  full-partition     the hosts lose each other on the link and the LAN, both
                     still reach the witness and the client: the primary claims
                     first and runs on; the secondary loses the claim and stops
                     itself; after the heal the pair re-protects by itself
  isolate-primary    the primary loses every link: the secondary wins the claim
                     and takes over; the isolated primary cannot claim, so it
                     stays held (its output too) and, once it is back, learns
                     it lost and stops
  power-primary      power pulled on the primary: takeover as without a witness,
                     the claim's time in the failover reported
  power-no-witness   the secondary's host cannot reach the witness, then the
                     primary's power is pulled: no takeover, the guest held and
                     status says why; `ftctl takeover` refuses without --force,
                     and with it the guest carries on, on the same connection
  witness-down       the witness leaves the LAN while the pair is healthy:
                     nothing happens to the guest, both hosts' status says
                     failover is not automatic; it comes back: status clears
  three-members      a 3-member witness with one member killed: a power pull
                     still fails over

Every scenario asserts: the client's sequence is gapless and never rewound
on one TCP connection (a reply from the losing copy would show as a repeat
or a rewind); exactly one copy runs as the guest at the end; the survivor's
disk is e2fsck-clean with a gapless on-disk log; its kernel log is clean.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (GUEST, Lab, SeqClient, assert_kernels_clean, check_disk,  # noqa: E402
                     fault_time, guest_dir, log, qemu_binary, run_all, running_copies,
                     scenarios_asked, wait_failed_over, wait_for, wait_state)

BEFORE_S = 6
# The client's longest wait where the witness answers: detection, claim, takeover.
MAX_SILENCE_MS = 1000
# How soon a host's status says the witness is gone (probe every 1 s, 0.5 s timeout).
WITNESS_NEWS_S = 3
# How long a held failover is watched before an operator forces it.
HELD_S = 4


def start(lab, members=1):
    lab.install_guest(qemu_binary(), guest_dir())
    res = lab.protect("hostA")
    assert res.returncode == 0, "protect failed: %s" % res.stderr
    wait_state(lab, "hostB", "protected", timeout=60)
    wait_for("guest up", lambda: "GUEST UP" in lab.serial("hostA"), timeout=120)
    for host in ("hostA", "hostB"):
        wait_for("%s sees the witness" % host, lambda h=host: witness_of(lab, h).get("reachable"),
                 timeout=10)
    client = SeqClient(lab, seconds=0, log_path=os.path.join(lab.artifacts, "client.jsonl"))
    time.sleep(BEFORE_S)
    return client


def witness_of(lab, host):
    doc = lab.daemon_status(host, None) or {}
    return doc.get("witness") or {}


def stopped_by_witness(lab, host, winner):
    """The loser stops its copy; its peer may make it a secondary again at once."""
    line = "to %s: this copy stops" % winner
    wait_for("%s to stop for losing the claim to %s" % (host, winner),
             lambda: line in lab.daemon_log(host), timeout=30)
    # The line comes as the copy begins to stop (libvirt destroys its QEMU meanwhile).
    def stopped():
        st = lab.status(host)
        return st if st and st["state"] != "stopping" else None
    st = wait_for("%s to finish stopping" % host, stopped, timeout=30)
    assert st["state"] == "stopped" or st["role"] == "secondary", \
        "%s lost the claim and still runs the guest: %s" % (host, st)
    return st


def won_claim(st):
    lf = st["last_failover"]
    assert lf and lf.get("claim_ms") is not None, "no claim in the failover: %s" % st
    return lf["claim_ms"]


def finish(lab, client, survivor, silence_ms=MAX_SILENCE_MS):
    summary = client.stop()
    log("client: %s" % summary)
    assert summary["connection_broken"] is None, "connection broke: %s" % summary
    assert not summary["gaps"] and not summary["repeats"] and not summary["rewinds"], \
        "the client saw two copies or lost answers: %s" % summary
    if silence_ms:
        assert summary["max_silence_ms"] < silence_ms, \
            "the client waited %.0f ms for an answer (bound %d ms)" % (
                summary["max_silence_ms"], silence_ms)
    live = running_copies(lab)
    assert live == [survivor], "live copies: %s (expected only %s)" % (live, survivor)
    ok, disk = check_disk(lab, survivor)
    assert ok, "survivor %s's disk not clean and gapless: %s" % (survivor, disk)
    assert_kernels_clean(lab, (survivor,))


def scenario_full_partition(lab):
    client = start(lab)
    t = fault_time(lab.lab("partition", "full").stdout)
    st = wait_failed_over(lab, "hostA", timeout=30)
    log("hostA ran on %.1f s after the partition, claim %.1f ms into its failover: %s" % (
        time.time() - t, won_claim(st), st["last_failover"]["reason"]))
    # Both paths silent at once, as in a power pull: the case only the witness tells apart.
    assert "answers on the LAN" not in st["last_failover"]["reason"], st["last_failover"]
    stopped_by_witness(lab, "hostB", "hostA")
    time.sleep(3)
    finish(lab, client, "hostA")
    lab.lab("heal")
    # Back together: the survivor re-protects onto the loser by itself.
    wait_state(lab, "hostA", "protected", timeout=240)
    wait_state(lab, "hostB", "protected", timeout=30)


def scenario_isolate_primary(lab):
    client = start(lab)
    t = fault_time(lab.lab("isolate", "A").stdout)
    st = wait_failed_over(lab, "hostB", timeout=30)
    log("hostB took over %.1f s after hostA's isolation, claim %.1f ms into it" % (
        time.time() - t, won_claim(st)))
    held = wait_for("hostA held", lambda: (lab.status("hostA") or {}).get("held"), timeout=10)
    log("hostA: %s" % held)
    assert lab.status("hostA")["state"] == "dropping-secondary", lab.status("hostA")
    time.sleep(3)
    lab.lab("heal")
    stopped_by_witness(lab, "hostA", "hostB")
    finish(lab, client, "hostB")


def scenario_power_primary(lab):
    client = start(lab)
    t = fault_time(lab.lab("power-off", "A").stdout)
    st = wait_failed_over(lab, "hostB", timeout=30)
    log("hostB took over: failover %.1f ms, claim %.1f ms into it (%.1f s after the pull)" % (
        st["last_failover"]["took_ms"], won_claim(st), time.time() - t))
    time.sleep(3)
    finish(lab, client, "hostB")


def scenario_power_no_witness(lab):
    client = start(lab)
    lab.lab("partition", "B")
    wait_for("hostB's status: witness unreachable",
             lambda: "not automatic" in (witness_of(lab, "hostB").get("error") or ""),
             timeout=WITNESS_NEWS_S)
    st = lab.status("hostB")
    assert st["state"] == "protected", "losing the witness changed the guest: %s" % st
    lab.lab("power-off", "A")
    held = wait_for("hostB held", lambda: (lab.status("hostB") or {}).get("held"), timeout=10)
    time.sleep(HELD_S)
    st = lab.status("hostB")
    assert st["state"] == "taking-over" and st["held"], "hostB did not hold: %s" % st
    assert running_copies(lab, ("hostB",)) == [], "hostB runs the guest without a claim"
    log("hostB held %.1f s: %s" % (st["held"]["since_ms"] / 1000, held["why"]))
    res = lab.ftctl("hostB", "takeover", GUEST, check=False)
    assert res.returncode == 1 and "--force" in res.stderr, \
        "takeover without --force: rc %d %s" % (res.returncode, res.stderr)
    res = lab.ftctl("hostB", "takeover", GUEST, "--force", check=False)
    assert res.returncode == 0, "takeover --force: %s" % res.stderr
    st = wait_failed_over(lab, "hostB", timeout=10)
    assert st["last_failover"]["claim_ms"] is None, st
    # The client waited while the guest was held: its TCP backs off meanwhile.
    wait_for("the client's next answer", lambda: client_answers(lab), timeout=30)
    time.sleep(3)
    finish(lab, client, "hostB", silence_ms=None)


def client_answers(lab):
    path = os.path.join(lab.artifacts, "client.jsonl")
    return os.path.exists(path) and time.time() - os.path.getmtime(path) < 1


def scenario_witness_down(lab):
    client = start(lab)
    lab.lab("witness", "down")
    for host in ("hostA", "hostB"):
        wait_for("%s's status: witness unreachable" % host,
                 lambda h=host: "not automatic" in (witness_of(lab, h).get("error") or ""),
                 timeout=WITNESS_NEWS_S)
    res = lab.ftctl("hostA", "status", check=False)
    assert "witness unreachable: failover is not automatic" in res.stdout, res.stdout
    time.sleep(3)
    for host, role in (("hostA", "primary"), ("hostB", "secondary")):
        st = lab.status(host)
        assert st["state"] == "protected" and st["role"] == role, \
            "the witness going changed %s: %s" % (host, st)
    lab.lab("witness", "up")
    for host in ("hostA", "hostB"):
        wait_for("%s's status: witness reachable" % host,
                 lambda h=host: witness_of(lab, h).get("reachable"), timeout=WITNESS_NEWS_S)
    finish(lab, client, "hostA")


def scenario_three_members(lab):
    client = start(lab)
    lab.lab("witness", "kill", "1")
    # If member 1 led, the other two elect a leader first (election timeout 500 ms).
    time.sleep(2)
    for host in ("hostA", "hostB"):
        wait_for("%s to see a 3-member witness with one down as reachable" % host,
                 lambda h=host: witness_of(lab, h).get("reachable"), timeout=10)
    lab.lab("power-off", "A")
    st = wait_failed_over(lab, "hostB", timeout=30)
    log("hostB took over with one member down: claim %.1f ms" % won_claim(st))
    time.sleep(3)
    finish(lab, client, "hostB")


SCENARIOS = {
    "full-partition": (scenario_full_partition, 1),
    "isolate-primary": (scenario_isolate_primary, 1),
    "power-primary": (scenario_power_primary, 1),
    "power-no-witness": (scenario_power_no_witness, 1),
    "witness-down": (scenario_witness_down, 1),
    "three-members": (scenario_three_members, 3),
}


def run_scenario(name):
    fn, members = SCENARIOS[name]
    lab = Lab("test_witness-" + name, witness=members)
    try:
        lab.up()
        fn(lab)
        log("PASS %s" % name)
    finally:
        lab.down()


def main():
    run_all(scenarios_asked(SCENARIOS), run_scenario)


if __name__ == "__main__":
    main()
