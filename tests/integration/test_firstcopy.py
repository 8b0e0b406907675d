#!/usr/bin/env python3
"""The first protection checks the secondary's disks before it trusts them.

  test_firstcopy.py [SCENARIO...]     default: all of them

Scenarios (each in a fresh lab):
  blank      the guest's disk is on hostA only.  `ftctl protect` on hostA:
             hostB creates a blank disk of the right size and says so, and
             hostA copies the whole disk before the pair enters COLO (the
             guest paused meanwhile: it never ran yet).  Asserted: a full copy
             of every byte.  Before, hostB's blank disk was taken for a copy
             the administrator had made (neither host knew a generation): the
             pair entered COLO with the secondary on zeros, and a failover
             handed the guest a blank disk.
  differing  hostB has a copy of the disk in which one 4 KiB block differs.
             Asserted: hostA compares the two copies before trusting hostB's,
             finds the block and copies the whole disk; `ftctl verify` then
             finds them identical.  Before, any copy present was trusted as it
             was.
  identical  the administrator's copies are the same: compared, nothing
             copied.
Each then pulls the power on hostA: hostB takes over on its disk, which is
e2fsck-clean with the guest's gapless counter log, and the client's one
connection stays gapless.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (GUEST, Lab, SeqClient, assert_kernels_clean, check_disk,  # noqa: E402
                     guest_dir, log, qemu_binary, run, run_all, scenarios_asked,
                     wait_failed_over, wait_for, wait_state)

MAX_SILENCE_MS = 1000
# differing: where hostB's copy gets 4 KiB of its own (guest offset), before anything runs.
ALTERED_AT = 40 * 1024 * 1024


def protected_from_hostA(lab):
    res = lab.protect("hostA")
    assert res.returncode == 0, "protect failed: %s" % res.stderr
    st = wait_state(lab, "hostB", "protected", timeout=120)
    a = lab.status("hostA")
    assert a["state"] == "protected" and st["role"] == "secondary", (a, st)
    log("protected; the first copy: %s" % a["last_resync"])
    return a


def full_copy(a):
    last = a["last_resync"]
    assert last and last["mode"] == "full", "no full copy to hostB: %s" % a
    assert last["bytes_moved"] == last["disk_bytes"], last
    return last


def scenario_blank(lab):
    os.unlink(lab.path("hostB", "/var/lib/libvirt/images/%s.qcow2" % GUEST))
    full_copy(protected_from_hostA(lab))


def scenario_differing(lab):
    image = lab.path("hostB", "/var/lib/libvirt/images/%s.qcow2" % GUEST)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a %d 4k" % ALTERED_AT, image)
    full_copy(protected_from_hostA(lab))
    said = lab.daemon_log("hostA")
    assert "differ from this host's in 4096 bytes (first: vda at %d)" % ALTERED_AT in said, \
        said[-2000:]
    res = lab.ftctl("hostA", "verify", GUEST, check=False, timeout=600)
    log("ftctl verify: rc=%d\n%s%s" % (res.returncode, res.stdout, res.stderr))
    assert res.returncode == 0, "the copies differ after the full copy: %s" % res.stdout


def scenario_identical(lab):
    a = protected_from_hostA(lab)
    assert a["last_resync"] is None, "a copy of identical disks: %s" % a["last_resync"]
    assert "are the same as this host's: nothing to copy" in lab.daemon_log("hostA")


SCENARIOS = {
    "blank": scenario_blank,
    "differing": scenario_differing,
    "identical": scenario_identical,
}


def run_scenario(name, qemu, gdir):
    lab = Lab("test_firstcopy-" + name)
    try:
        lab.up()
        lab.install_guest(qemu, gdir)
        SCENARIOS[name](lab)
        wait_for("guest up", lambda: "GUEST UP" in lab.serial("hostA"), timeout=120)
        client = SeqClient(lab, seconds=0, log_path=os.path.join(lab.artifacts, "client.jsonl"))
        time.sleep(8)
        lab.lab("power-off", "A")
        wait_failed_over(lab, "hostB", timeout=30)
        time.sleep(3)
        summary = client.stop()
        log("client: %s" % summary)
        assert summary["connection_broken"] is None, summary
        assert not summary["gaps"] and not summary["repeats"] and not summary["rewinds"], summary
        assert summary["max_silence_ms"] < MAX_SILENCE_MS, summary
        ok, disk = check_disk(lab, "hostB")
        assert ok, "hostB's disk is not the guest's: %s" % disk
        assert_kernels_clean(lab, ("hostB",))
        log("PASS %s: then a failover onto hostB's disk: %s" % (name, disk))
    finally:
        lab.down()


def main():
    wanted = scenarios_asked(SCENARIOS)
    qemu, gdir = qemu_binary(), guest_dir()
    run_all(wanted, lambda name: run_scenario(name, qemu, gdir))


if __name__ == "__main__":
    main()
