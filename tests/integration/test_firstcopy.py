#!/usr/bin/env python3
"""The first protection onto a host without the guest's disks copies them itself.

The guest's disk is on hostA only.  `ftctl protect` on hostA: hostB creates a
blank disk of the right size and says so, and hostA copies the whole disk
before the pair enters COLO (the guest paused meanwhile: it never ran yet).
Asserted: a full copy of every byte, both hosts protected; then a power pull
on hostA: hostB takes over on the copied disk, which is e2fsck-clean with the
guest's gapless counter log, and the client's one connection stays gapless.

Before this, hostB's blank disk was taken for a copy the administrator had
made (neither host knew a generation): the pair entered COLO with the
secondary on zeros, and a failover handed the guest a blank disk.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (GUEST, Lab, SeqClient, assert_kernels_clean, check_disk,  # noqa: E402
                     guest_dir, log, qemu_binary, wait_failed_over, wait_for, wait_state)

MAX_SILENCE_MS = 1000


def main():
    lab = Lab("test_firstcopy")
    try:
        lab.up()
        lab.install_guest(qemu_binary(), guest_dir())
        image = lab.path("hostB", "/var/lib/libvirt/images/%s.qcow2" % GUEST)
        os.unlink(image)
        res = lab.protect("hostA")
        assert res.returncode == 0, "protect failed: %s" % res.stderr
        st = wait_state(lab, "hostB", "protected", timeout=120)
        a = lab.status("hostA")
        last = a["last_resync"]
        log("first copy: %s" % last)
        assert last and last["mode"] == "full", "no full copy to the disk-less host: %s" % a
        assert last["bytes_moved"] == last["disk_bytes"], last
        assert a["state"] == "protected" and st["role"] == "secondary", (a, st)
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
        assert ok, "hostB's copied disk is not the guest's: %s" % disk
        assert_kernels_clean(lab, ("hostB",))
        log("PASS: full first copy (%d bytes), then a failover onto it: %s" % (
            last["bytes_moved"], disk))
    finally:
        lab.down()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        log("FAIL first-copy: %s" % e)
        sys.exit(1)
