#!/usr/bin/env python3
"""ftctl verify: both copies of a protected guest's disks, compared while it runs.

  test_verify.py

One lab.  The test guest has a second disk, vdb, raw and without a filesystem
(the guest's writer pokes 4 KiB blocks straight onto it), and is protected
from hostA; a client talks to it from start to end.

  1. While the guest writes (8 MiB of blobs on vda, 64 pokes on vdb),
     `ftctl verify` on hostA: exit 0, both disks identical (a block that a
     write is under way to is read again, not counted), "last_verify" in the
     status, a "verify" event.
  2. Refusals: on hostB (the secondary) it names hostA; an unknown guest.
  3. 4 KiB of hostB's vdb image are flipped underneath its QEMU: the verify
     finds exactly that range (exit 1), vda identical; `ftctl status` says
     the copies differ, kvm-ftd's log says so once.  Until here: no failover,
     the pair stays protected.
  4. `ftctl verify --repair`: the secondary is dropped, re-protected with a
     whole copy, and the copies compare identical again (exit 0).

Throughout, the client's sequence is gapless on one connection.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (GUEST, TOOLS, WRITER_PORT, EventFollower, Lab, SeqClient,  # noqa: E402
                     guest_dir, log, qemu_binary, wait_for, wait_state)

FLIP_AT = 5 * 1024 * 1024 + 8192   # in vdb, far from nothing in particular: a raw disk
FLIP_LEN = 4096


def verify(lab, host, guest=GUEST):
    res = lab.ftctl(host, "verify", guest, check=False, timeout=600)
    log("ftctl verify on %s: rc=%d\n%s%s" % (host, res.returncode, res.stdout, res.stderr))
    return res


def last_verify(lab):
    st = lab.status("hostA")
    assert st["state"] == "protected" and st["role"] == "primary", st
    return st["last_verify"]


def by_target(found):
    return {d["target"]: d for d in found["disks"]}


def flip(path, offset, length):
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(length)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))
        f.flush()
        os.fsync(f.fileno())


def main():
    qemu, gdir = qemu_binary(), guest_dir()
    lab = Lab("test_verify")
    client = None
    try:
        lab.up()
        lab.install_guest(qemu, gdir, data_disk="raw", workload="raw2")
        res = lab.protect("hostA")
        assert res.returncode == 0, "protect failed: %s" % res.stderr
        wait_state(lab, "hostB", "protected", timeout=60)
        wait_for("guest up", lambda: "GUEST UP" in lab.serial("hostA"), timeout=120)
        client = SeqClient(lab, seconds=0, log_path=os.path.join(lab.artifacts, "client.jsonl"))
        events = EventFollower(lab, "hostA")
        time.sleep(3)

        # 1. identical, while the guest writes to both disks
        writes = []
        writer = threading.Thread(target=lambda: writes.extend([
            lab.guest_write(8),
            *[lab.client("python3", os.path.join(TOOLS, "guestwrite"), "--poke", "16",
                         "--port", str(WRITER_PORT["vdb"])) for _ in range(4)]]))
        writer.start()
        res = verify(lab, "hostA")
        writer.join()
        assert res.returncode == 0, "verify of two identical copies: rc=%d %s" % (
            res.returncode, res.stdout + res.stderr)
        found = last_verify(lab)
        assert found and found["differing_bytes"] == 0, found
        assert sorted(by_target(found)) == ["vda", "vdb"], found
        assert "identical" in res.stdout, res.stdout
        log("1. identical while the guest wrote: %s" % found)

        # 2. refusals
        res = verify(lab, "hostB")
        assert res.returncode == 1 and "hostA" in res.stderr, res
        res = verify(lab, "hostA", "noguest")
        assert res.returncode == 1, res
        log("2. refused on the secondary (names hostA) and for an unknown guest")

        # 3. one block flipped on the secondary's copy of vdb
        flip(lab.path("hostB", lab.data_disk), FLIP_AT, FLIP_LEN)
        res = verify(lab, "hostA")
        assert res.returncode == 1, "verify missed a flipped block: rc=%d %s" % (
            res.returncode, res.stdout)
        found = by_target(last_verify(lab))
        assert found["vdb"]["ranges"] == [[FLIP_AT, FLIP_LEN]], found
        assert found["vdb"]["differing_bytes"] == FLIP_LEN, found
        assert found["vda"]["differing_bytes"] == 0, found
        shown = lab.ftctl("hostA", "status", GUEST).stdout
        assert "DIFFER" in shown, shown
        assert lab.daemon_log("hostA").count("verify: the two copies of the guest's disks "
                                             "differ in %d bytes" % FLIP_LEN) == 1
        log("3. the flipped block found: %s" % found["vdb"])

        verifies = [e["verify"] for e in events.stop() if "verify" in e]
        assert [v["differing_bytes"] for v in verifies] == [0, FLIP_LEN], verifies

        for host, role in (("hostA", "primary"), ("hostB", "secondary")):
            st = lab.status(host)
            assert st["state"] == "protected" and st["role"] == role, st
            assert st["last_failover"] is None, st
        log("no failover until here: the pair protected, hostA primary")

        # 4. repair
        res = lab.ftctl("hostA", "verify", GUEST, "--repair", "--timeout-s", "300", check=False,
                        timeout=600)
        log("ftctl verify --repair: rc=%d\n%s%s" % (res.returncode, res.stdout, res.stderr))
        assert res.returncode == 0, "repair: rc=%d %s" % (res.returncode, res.stdout + res.stderr)
        st = lab.status("hostA")
        assert st["last_verify"]["differing_bytes"] == 0, st["last_verify"]
        assert st["last_resync"]["mode"] == "full", st["last_resync"]
        assert "verify --repair" in st["last_failover"]["reason"], st["last_failover"]
        assert lab.status("hostB")["state"] == "protected", lab.status("hostB")
        log("4. repaired: %s, then identical" % st["last_resync"])
        summary = client.stop()
        client = None
        log("client: %s" % summary)
        assert summary["connection_broken"] is None, summary
        assert not summary["gaps"] and not summary["repeats"] and not summary["rewinds"], summary
        log("PASS verify: identical under writes, refusals, a flipped block found and repaired")
    finally:
        if client:
            client.stop()
        lab.down()


if __name__ == "__main__":
    main()
