#!/usr/bin/env python3
"""Two guests on one pair of hosts, with opposite roles, each carries on.

  test_pair.py

One kvm-ftd per host protects two guests at once: ftguest runs on hostA
with its secondary on hostB, ftguest2 on hostB with its secondary on hostA
(its own address, tap, MAC and replication ports).  A client talks to each
on one TCP connection throughout.

1. ftguest2's secondary QEMU on hostA is SIGKILLed.  hostB drops that
   secondary, runs ftguest2 alone and re-protects it onto hostA (disk copy,
   first sync, COLO), while ftguest stays protected beside it: no failover,
   its checkpoints go on.
2. Then hostA's power is pulled.  hostB takes ftguest over and runs
   ftguest2 alone: both run on hostB as primaries, exactly one copy each,
   both clients gapless on their first connection, both disks clean.

The failure detector's lateness on each host over the whole run is printed
(a figure: tools/bench stall measures it under a set work).
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (AFTER_FAILOVER, GUEST, Lab, SeqClient, assert_kernels_clean,  # noqa: E402
                     check_disk, detector_since, guest_dir, log, qemu_binary,
                     running_copies, wait_failed_over, wait_for, wait_state)

GUEST2 = "ftguest2"
GUEST2_IP = "10.0.0.11"
# Above ftguest's default ports (9100...): each guest's replication channels are its own.
GUEST2_PORT_BASE = 9200
# The clients' longest wait, through the secondary's loss, the re-protection and the pull.
MAX_SILENCE_MS = 1500


def qemu_pid(lab, host, name):
    with open(lab.path(host, "/run/libvirt/qemu/%s.pid" % name)) as f:
        return int(f.read().strip())


def checkpoints(lab, host, name):
    st = lab.status(host, name)
    return st["checkpoints"] if st else None


def assert_client_gapless(name, summary):
    log("%s's client: %s" % (name, summary))
    assert summary["connection_broken"] is None, (name, summary)
    assert not summary["gaps"] and not summary["repeats"] and not summary["rewinds"], \
        (name, summary)
    assert summary["replies"] > 0, (name, summary)
    assert summary["max_silence_ms"] < MAX_SILENCE_MS, (name, summary)


def protect_both(lab):
    res = lab.protect("hostA")
    assert res.returncode == 0, "protect %s failed: %s" % (GUEST, res.stderr)
    # The definition reaches hostB through kvm-ftd (define-guest) before it can start there.
    wait_for("%s defined on hostB" % GUEST2,
             lambda: lab.virsh("hostB", "dominfo", GUEST2, check=False).returncode == 0,
             timeout=60)
    res = lab.protect("hostB", name=GUEST2)
    assert res.returncode == 0, "protect %s failed: %s" % (GUEST2, res.stderr)
    for host, name, role in (("hostA", GUEST, "primary"), ("hostB", GUEST, "secondary"),
                             ("hostB", GUEST2, "primary"), ("hostA", GUEST2, "secondary")):
        st = wait_state(lab, host, "protected", timeout=180, name=name)
        assert st["role"] == role, "%s on %s is %s, not %s" % (name, host, st["role"], role)
    for host, name in (("hostA", GUEST), ("hostB", GUEST2)):
        wait_for("%s up" % name, lambda: "GUEST UP" in lab.serial(host, name), timeout=180)
    log("both protected: %s on hostA, %s on hostB" % (GUEST, GUEST2))


def reprotect_beside(lab):
    """ftguest2 loses its secondary and is re-protected while ftguest stays protected."""
    before = checkpoints(lab, "hostA", GUEST)
    os.kill(qemu_pid(lab, "hostA", GUEST2), signal.SIGKILL)
    log("SIGKILLed %s's secondary QEMU on hostA" % GUEST2)
    st = wait_for("hostB to drop %s's secondary" % GUEST2,
                  lambda: (lambda s: s if s and s["state"] != "protected" else None)(
                      lab.status("hostB", GUEST2)), timeout=60)
    log("%s on hostB: %s" % (GUEST2, st["state"]))
    st = wait_state(lab, "hostB", "protected", timeout=300, name=GUEST2)
    assert st["last_resync"], "re-protected without a copy: %s" % st
    log("%s re-protected onto hostA: %s" % (GUEST2, st["last_resync"]))
    a = lab.status("hostA", GUEST)
    assert a["state"] == "protected" and a["role"] == "primary" and not a["last_failover"], \
        "%s was disturbed by %s's re-protection: %s" % (GUEST, GUEST2, a)
    assert a["checkpoints"] > before, \
        "%s's checkpoints stopped (%d then %d)" % (GUEST, before, a["checkpoints"])
    log("%s stayed protected beside it: %d checkpoints meanwhile" % (GUEST, a["checkpoints"]
                                                                    - before))


def main():
    qemu, gdir = qemu_binary(), guest_dir()
    lab = Lab("test_pair")
    clients = {}
    try:
        lab.up()
        lab.install_guest(qemu, gdir)
        lab.install_guest(qemu, gdir, name=GUEST2, ip=GUEST2_IP + "/24",
                          mac="52:54:00:c0:10:02", tap="ftap1", port_base=GUEST2_PORT_BASE)
        protect_both(lab)
        t0 = time.time()
        clients[GUEST] = SeqClient(lab, log_path=os.path.join(lab.artifacts, "client1.jsonl"))
        clients[GUEST2] = SeqClient(lab, host=GUEST2_IP,
                                    log_path=os.path.join(lab.artifacts, "client2.jsonl"))
        time.sleep(5)
        reprotect_beside(lab)
        time.sleep(5)
        for host in ("hostA", "hostB"):
            log("%s's failure detector so far: %s" % (host, detector_since(lab, host, t0)))
        lab.lab("power-off", "A")
        wait_failed_over(lab, "hostB", timeout=30, name=GUEST)
        wait_for("%s alone on hostB" % GUEST2,
                 lambda: (lambda s: s if s and s["state"] != "protected" else None)(
                     lab.status("hostB", GUEST2)), timeout=30)
        time.sleep(5)
        for name in (GUEST, GUEST2):
            assert_client_gapless(name, clients.pop(name).stop())
            st = lab.status("hostB", name)
            assert st["role"] == "primary" and st["state"] in AFTER_FAILOVER, \
                "%s on hostB after the pull: %s" % (name, st)
            assert running_copies(lab, ("hostB",), name=name) == ["hostB"], name
            ok, disk = check_disk(lab, "hostB", name=name)
            assert ok, "%s's disk on hostB is not the guest's: %s" % (name, disk)
            log("%s on hostB: %s, disk clean: %s" % (name, st["state"], disk))
        assert_kernels_clean(lab, ("hostB",))
        log("hostB's failure detector over the run: %s" % detector_since(lab, "hostB", t0))
        log("PASS two guests with opposite roles: one re-protected beside the other, then "
            "a power pull")
    finally:
        for client in clients.values():
            client.stop()
        lab.down()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        log("FAIL pair: %s" % e)
        sys.exit(1)
