#!/usr/bin/env python3
"""A guest protected by kvm-ft stays in COLO and serves a client without a gap.

Brings up the lab, defines the test guest on hostA, protects it with
`ftctl protect`, keeps one client connection talking to it for 30 s while
checkpoints happen, and asserts: the pair stays in COLO on both hosts,
checkpoints complete, the client's sequence is gapless on one connection,
and the primary's QMP keeps answering (the TCG checkpoint deadlock is gone).
Also: the primary's channels between its filters and colo-compare are unix
sockets in kvm-ftd's 0700 run dir, and no TCP port on loopback is left for
a local user to connect to first.
"""
import os
import stat
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (GUEST, Lab, SeqClient, assert_kernels_clean, check_disk,  # noqa: E402
                     guest_dir, log, qemu_binary, wait_for, wait_state)

CLIENT_SECONDS = 30
INTERVAL_MS = 2000


def primary_qmp_latency(lab):
    t0 = time.time()
    res = lab.virsh("hostA", "qemu-monitor-command", GUEST, '{"execute":"query-status"}',
                    check=False, timeout=20)
    took = time.time() - t0
    assert res.returncode == 0, "primary QMP did not answer: %s %s" % (res.stdout, res.stderr)
    return took


def check_local_channels(lab):
    """The primary QEMU's own channels: unix sockets in /run/kvm-ft (mode 0700), no
    TCP listener on loopback."""
    listeners = lab.lab("exec", "A", "ss", "-ltnH").stdout
    assert "127.0.0.1:" not in listeners, "TCP listeners on loopback:\n%s" % listeners
    run_dir = lab.path("hostA", "/run/kvm-ft")
    mode = os.stat(run_dir).st_mode & 0o777
    assert mode == 0o700, "run dir %s has mode %o" % (run_dir, mode)
    for channel in ("colo-in", "colo-out"):
        path = os.path.join(run_dir, "%s.%s" % (GUEST, channel))
        assert os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode), \
            "no unix socket %s" % path
    log("local channels: unix sockets in %s (mode %o); loopback listeners: none" % (
        run_dir, mode))


def main():
    qemu = qemu_binary()
    gdir = guest_dir()
    lab = Lab("test_protect")
    try:
        lab.up()
        lab.install_guest(qemu, gdir, interval_ms=INTERVAL_MS)
        res = lab.protect("hostA")
        assert res.returncode == 0, "ftctl protect failed: %s" % res.stderr

        a = lab.status("hostA")
        b = wait_state(lab, "hostB", "protected", timeout=60)
        assert a["role"] == "primary" and a["state"] == "protected", a
        assert b["role"] == "secondary", b
        check_local_channels(lab)
        wait_for("guest up on the primary's serial", lambda: "GUEST UP" in lab.serial("hostA"),
                 timeout=120)

        client = SeqClient(lab, seconds=CLIENT_SECONDS,
                           log_path=os.path.join(lab.artifacts, "client.jsonl"))
        qmp_worst = 0.0
        samples = []
        end = time.time() + CLIENT_SECONDS
        while time.time() < end:
            qmp_worst = max(qmp_worst, primary_qmp_latency(lab))
            sa, sb = lab.status("hostA"), lab.status("hostB")
            samples.append((sa, sb))
            assert sa and sa["state"] == "protected" and sa["colo"]["mode"] == "primary", sa
            assert sb and sb["state"] == "protected" and sb["colo"]["mode"] == "secondary", sb
            time.sleep(2)
        summary = client.result(timeout=120)
        final = lab.status("hostA")
        log("client: %s" % summary)
        log("primary: %s" % final)
        log("worst primary QMP round trip: %.3f s" % qmp_worst)

        assert summary["connection_broken"] is None, summary
        assert summary["replies"] >= CLIENT_SECONDS * 5, summary
        assert not summary["gaps"] and not summary["repeats"] and not summary["rewinds"], summary
        # 30 s at a 2 s interval: at least a few checkpoints, whatever the load.
        assert final["checkpoints"] >= 5, final
        assert final["last_pause_ms"] is not None and final["last_pause_ms"] > 0, final
        assert final["since_last_checkpoint_ms"] is not None, final
        assert final["since_last_checkpoint_ms"] < 4 * INTERVAL_MS, final
        assert qmp_worst < 5.0, "primary QMP stalled for %.1f s" % qmp_worst
        assert_kernels_clean(lab)
        ok, disk = check_disk(lab, "hostA")
        log("primary's disk: %s" % disk)
        assert ok, "primary's disk is not clean and gapless: %s" % disk
        log("PASS: %d checkpoints, last pause %.1f ms, %d replies gapless on one connection"
            % (final["checkpoints"], final["last_pause_ms"], summary["replies"]))
    finally:
        lab.down()


if __name__ == "__main__":
    main()
