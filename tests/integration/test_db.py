#!/usr/bin/env python3
"""A real database under protection, and a power pull in the middle of its benchmark.

  test_db.py [MODE...]     output modes, default: passive auto

The Debian 12 guest (tools/build-debian-guest: its own kernel and init, root
on its replicated virtio disk, 1 GiB, MariaDB) is protected with
<ft:checkpoint output=MODE>.  From the client namespace, for SYSBENCH_S:
sysbench oltp_read_write (4 threads), sysbench oltp_insert (1 thread: every
committed transaction adds one row), and tools/rowclient (numbered rows, one
transaction each, on one connection of its own).  The power is pulled on the
primary PULL_AT_S into the run.  Asserts:
  - no client connection broke and neither sysbench reported an error;
  - every acknowledged numbered row is on the survivor, and nothing else:
    rows 1..last, gapless;
  - the sbtest tables grew by exactly the transactions oltp_insert counted:
    no committed insert lost, none applied twice;
  - while protected (before the pull, after the first report second, which
    holds the connections' set-up) oltp_read_write never went two seconds in
    a row without a completed transaction, and the numbered rows never
    waited longer than MAX_ROW_SILENCE_MS, the pull included;
  - the survivor's kernel log is clean and only one copy runs.
Throughput figures, protected against unprotected, are tools/bench db's.

The issue's stricter aim, no second at all without a transaction, is not met
on this lab's two shared cores under TCG: every checkpoint slows the TCG
guest and the secondary competes with the primary for the cores, so single
seconds without a completed transaction occur in every mode (measured
2026-12-02, 15 s protected: compare 2-5, passive 6, auto 1); tools/bench db
reports them.  The two-seconds-in-a-row bound guards against stalls of
seconds (the issue saw whole seconds at 0 tx/s and transactions of up to
8.7 s); a fixed 3 s compare timeout did not trip it here (2 isolated zero
seconds: this database's secondary is late, not silent).

compare mode is not in the default: here every statement's reply waits for
the secondary's copy, which comes ~250 ms late (colo-compare's lag estimate,
qemu-patches 0009), so a transaction of 18 statements takes seconds, and two
zero seconds in a row happen now and then (tools/bench db, 2026-12-02:
seconds 32 and 33 of 45).  Run it by hand: test_db.py compare.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dbload import (RowClient, Sysbench, db_counts, longest_stall, start_db_guest,  # noqa: E402
                    summary_line, zero_seconds)
from labtest import (Lab, assert_kernels_clean, debian_guest_dir, fault_time, log,  # noqa: E402
                     qemu_binary, run_all, running_copies, wait_failed_over)

SYSBENCH_S = 30
PULL_AT_S = 15
# The detection (200 ms), the takeover and the guest's TCP timers, under TCG on a shared
# 2-core machine; a failover that regressed to seconds fails.
MAX_ROW_SILENCE_MS = 2000
# Consecutive report seconds without a transaction while protected.
MAX_STALL_S = 1


def run_mode(mode, qemu, ddir):
    lab = Lab("test_db-%s" % mode)
    try:
        lab.up()
        start_db_guest(lab, qemu, ddir, mode)
        before = db_counts(lab)
        log("%s: before: %s" % (mode, before))
        assert before["ftrows"]["count"] == 0, before

        art = lab.artifacts
        rows = RowClient(lab, seconds=SYSBENCH_S, log_path=os.path.join(art, "rows.jsonl"))
        rw = Sysbench(lab, "oltp_read_write", threads=4, seconds=SYSBENCH_S,
                      log_path=os.path.join(art, "sysbench-rw.txt"))
        ins = Sysbench(lab, "oltp_insert", threads=1, seconds=SYSBENCH_S,
                       log_path=os.path.join(art, "sysbench-insert.txt"))
        started = time.time()
        time.sleep(PULL_AT_S)
        st = lab.status("hostA")
        log("%s: before the pull: %d checkpoints %s, pause %s, output %s" % (
            mode, st["checkpoints"], st["checkpoints_by_cause"], st["pause_ms"],
            st.get("output_auto")))
        t = fault_time(lab.lab("power-off", "A").stdout)
        pulled_at_s = t - started
        log("%s: power pulled on hostA %.1f s into the run" % (mode, pulled_at_s))
        wait_failed_over(lab, "hostB", timeout=60)
        rw_res, ins_res = rw.result(), ins.result()
        row = rows.result()
        after = db_counts(lab)
        summary_line("%s oltp_read_write" % mode, rw_res)
        summary_line("%s oltp_insert" % mode, ins_res)
        log("%s: rows %s; after: %s" % (mode, row, after))

        for name, r in (("oltp_read_write", rw_res), ("oltp_insert", ins_res)):
            assert not r.get("error") and r["rc"] == 0, "%s failed: %s" % (name, r.get("error"))
            assert r["transactions"] > 0, (name, r)
        assert row["connection_broken"] is None, row
        assert row["acknowledged"] > 0, row
        f = after["ftrows"]
        assert f["count"] == row["last"] and f["min"] == 1 and f["max"] == row["last"], \
            "numbered rows on the survivor %s, the client had rows 1..%d acknowledged" \
            % (f, row["last"])
        grew = after["sbtest_rows"] - before["sbtest_rows"]
        assert grew == ins_res["transactions"], \
            "the tables grew by %d rows, oltp_insert committed %d" % (grew,
                                                                      ins_res["transactions"])
        stalled = zero_seconds(rw_res["series"], until_s=int(pulled_at_s) - 1)
        log("%s: seconds without a transaction while protected: %s" % (mode, stalled))
        assert longest_stall(stalled) <= MAX_STALL_S, \
            "%d seconds in a row without a transaction while protected: %s" % (
                longest_stall(stalled), stalled)
        assert row["max_silence_ms"] < MAX_ROW_SILENCE_MS, \
            "a numbered row waited %.0f ms (bound %d)" % (row["max_silence_ms"],
                                                          MAX_ROW_SILENCE_MS)
        assert_kernels_clean(lab, ("hostB",))
        copies = running_copies(lab, hosts=("hostB",))
        assert copies == ["hostB"], copies
        log("PASS %s: %d read/write + %d insert transactions, %d numbered rows, all on the "
            "survivor; longest row wait %.0f ms" % (mode, rw_res["transactions"],
                                                    ins_res["transactions"], row["last"],
                                                    row["max_silence_ms"]))
    finally:
        lab.down()


def main():
    modes = sys.argv[1:] or ["passive", "auto"]
    qemu, ddir = qemu_binary(), debian_guest_dir()
    run_all(modes, lambda mode: run_mode(mode, qemu, ddir))


if __name__ == "__main__":
    main()
