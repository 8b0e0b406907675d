#!/usr/bin/env python3
"""A checkpoint that finds the secondary's guest ahead of the primary's at a
device probe leaves the secondary a working disk.

A COLO secondary loads every checkpoint on top of devices its own copy of the
guest has been driving since the previous one.  While the guest boots, its
copy on the secondary can have probed the virtio-blk disk and read from it
while the primary's copy has not yet set the disk's queue up.  QEMU then kept
the secondary's own ring indices for that queue, and the secondary's guest,
probing the disk again from the primary's state, broke its queue:
"virtio_blk virtio1: req.0:id 0 is not a head!", then I/O errors, and the
secondary ran a guest that could not read its disk until the next checkpoint
(after a failover in between: for good).  qemu-patches 0013 fixes it.

The race is arranged, not waited for: with a long checkpoint interval, the
guest's /init waits PAUSE_S seconds between loading virtio_pci, which resets
the virtio devices, and loading their drivers (workload probe-pause, announced
on the console).  The primary's guest is paused there (HMP stop): the disk's
status shows ACKNOWLEDGE and its queue is not set up (descriptor address 0).
The secondary's guest runs on until it has completed requests on the disk;
then a checkpoint is forced (setting x-checkpoint-delay wakes COLO's
checkpoint thread), which also resumes the primary.  Asserts that the arrangement held, then that the secondary's guest,
from that checkpoint on, mounts its disk and boots (its console shows "GUEST
BOOT", no I/O error, no kernel trouble).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (GUEST, Lab, assert_kernels_clean, guest_dir, kernel_trouble, log,  # noqa: E402
                     qemu_binary, wait_for, wait_state)

# Long enough that no periodic checkpoint lands while the race is arranged, and the
# secondary's watchdog (an interval + 2 s) leaves the paused primary alone.
INTERVAL_MS = 10000
VBLK = "/machine/peripheral/kvmft-vblk0/virtio-backend"
ACKNOWLEDGE = "VIRTIO_CONFIG_S_ACKNOWLEDGE"
# The window in which the primary is paused; after it the secondary probes its disk.
PAUSE_S = 3


def qmp(lab, host, command, **arguments):
    cmd = {"execute": command}
    if arguments:
        cmd["arguments"] = arguments
    res = lab.virsh(host, "qemu-monitor-command", GUEST, json.dumps(cmd), timeout=20)
    return json.loads(res.stdout)["return"]


def disk_queue(lab, host):
    """(device statuses, queue 0's status) of the guest's virtio-blk disk on host."""
    statuses = qmp(lab, host, "x-query-virtio-status", path=VBLK)["status"]["statuses"]
    return statuses, qmp(lab, host, "x-query-virtio-queue-status", path=VBLK, queue=0)


def pause_primary_before_disk_setup(lab):
    """Pauses the primary's guest in its probe pause: after virtio_pci reset the disk,
    before the disk's queue is set up."""
    wait_for("the primary's guest in its probe pause",
             lambda: "GUEST PROBE PAUSE" in lab.serial("hostA"), timeout=120, interval=0.01)
    lab.virsh("hostA", "qemu-monitor-command", GUEST, "--hmp", "stop")
    statuses, queue = disk_queue(lab, "hostA")
    assert any(s.startswith(ACKNOWLEDGE) for s in statuses) and queue["vring-desc"] == 0, \
        "the primary was not paused between its disk's reset and its queue's set-up " \
        "(statuses %s, queue %s)" % (statuses, queue)
    log("primary paused: disk reset and acknowledged, queue not set up (%s)" % queue)


def main():
    qemu, gdir = qemu_binary(), guest_dir()
    lab = Lab("test_secondary_ahead")
    try:
        lab.up()
        lab.install_guest(qemu, gdir, interval_ms=INTERVAL_MS, workload="probe-pause:%d" % PAUSE_S)
        res = lab.protect("hostA")
        assert res.returncode == 0, "ftctl protect failed: %s" % res.stderr
        wait_state(lab, "hostB", "protected", timeout=60)

        pause_primary_before_disk_setup(lab)
        _, ahead = wait_for("the secondary's guest completes requests on its disk",
                            lambda: (lambda q: q if q[1]["used-idx"] >= 2 else None)(
                                disk_queue(lab, "hostB")),
                            timeout=PAUSE_S + 5, interval=0.1)
        log("secondary's disk queue before the checkpoint: %s" % ahead)
        before = lab.status("hostA")["checkpoints"]
        seen = len(lab.serial("hostB"))
        qmp(lab, "hostA", "migrate-set-parameters", **{"x-checkpoint-delay": INTERVAL_MS})
        wait_for("the forced checkpoint", lambda: lab.status("hostA")["checkpoints"] > before,
                 timeout=10, interval=0.1)
        assert qmp(lab, "hostA", "query-status")["status"] == "running", \
            "the checkpoint did not resume the primary"

        tail = wait_for("the secondary's guest mounts its disk (or breaks it)",
                        lambda: (lambda t: t if "GUEST BOOT" in t or "GUEST FAIL" in t or
                                 kernel_trouble(t) else None)(lab.serial("hostB")[seen:]),
                        timeout=INTERVAL_MS / 1000 - 2, interval=0.1)
        log("secondary's console after the checkpoint:\n%s" % tail.strip())
        trouble = kernel_trouble(tail)
        assert trouble is None and "GUEST FAIL" not in tail, \
            "the secondary's guest broke its disk after the checkpoint: %s" % (
                trouble or tail.strip().splitlines()[-1])
        wait_for("guest up", lambda: "GUEST UP" in lab.serial("hostA"), timeout=60)
        assert_kernels_clean(lab)
        log("PASS: the secondary was %d requests ahead on a disk the primary had not set up; "
            "from the checkpoint on it mounted its disk" % ahead["used-idx"])
    finally:
        lab.down()


if __name__ == "__main__":
    main()
