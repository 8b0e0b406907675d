"""A real workload for the lab: the Debian guest's MariaDB (tools/build-debian-guest),
driven from the client namespace by sysbench and by tools/rowclient.  Shared by
test_db.py and tools/bench db."""
import json
import os
import re
import subprocess

from labtest import GUEST, TOOLS, ClientProcess, last_line, log, wait_for, wait_state

SYSBENCH_TABLES = 4
# sysbench 1.0 has no warm-up: its first report second holds the connections' set-up
# (MariaDB's handshake carries a random challenge, a difference on every connection).
SETUP_S = 1
SYSBENCH_TABLE_SIZE = 10000
DB_ARGS = ["--db-driver=mysql", "--mysql-host=10.0.0.10", "--mysql-port=3306",
           "--mysql-user=sbtest", "--mysql-password=sbtest", "--mysql-db=sbtest",
           "--tables=%d" % SYSBENCH_TABLES, "--table-size=%d" % SYSBENCH_TABLE_SIZE]

# "[ 3s ] thds: 4 tps: 31.00 qps: 620.00 (r/w/o: 434.00/124.00/62.00) lat (ms,99%): 200.47 ..."
INTERVAL_LINE = re.compile(r"^\[ *(\d+)s \] thds: \d+ tps: ([\d.]+) qps: ([\d.]+) .*?"
                           r"lat \(ms,\d+%\): ([\d.]+) err/s: ([\d.]+)")


def parse_sysbench(text):
    """Per-second figures and the totals of one sysbench run's output."""
    series = []
    for line in text.splitlines():
        m = INTERVAL_LINE.match(line.strip())
        if m:
            series.append({"s": int(m.group(1)), "tps": float(m.group(2)),
                           "qps": float(m.group(3)), "lat_p99_ms": float(m.group(4)),
                           "err_per_s": float(m.group(5))})

    def total(pattern, cast=float):
        m = re.search(pattern, text)
        return cast(m.group(1)) if m else None

    return {
        "series": series,
        "transactions": total(r"transactions:\s+(\d+)", int),
        "tps": total(r"transactions:\s+\d+\s+\(([\d.]+) per sec"),
        "writes": total(r"write:\s+(\d+)", int),
        "errors": total(r"ignored errors:\s+(\d+)", int),
        "lat_ms": {"avg": total(r"avg:\s+([\d.]+)"), "p99": total(r"99th percentile:\s+([\d.]+)"),
                   "max": total(r"max:\s+([\d.]+)")},
    }


def start_db_guest(lab, qemu, ddir, mode=None):
    """The Debian + MariaDB guest on hostA, protected with output=MODE (None: started
    unprotected by libvirt), once MariaDB answers."""
    lab.install_guest(qemu, ddir, flavor="debian", ft=mode is not None,
                      output=mode or "compare")
    if mode is None:
        lab.virsh("hostA", "start", GUEST)
    else:
        res = lab.protect("hostA", timeout_s=600)
        assert res.returncode == 0, "ftctl protect failed: %s" % res.stderr.strip()
        wait_state(lab, "hostB", "protected", timeout=120)
    wait_for("MariaDB up", lambda: "GUEST UP" in lab.serial("hostA"), timeout=600, interval=1)


class Sysbench:
    """sysbench TEST run in the client namespace (Debian's sysbench, from the host)."""

    def __init__(self, lab, test="oltp_read_write", threads=4, seconds=30, log_path=None):
        args = [os.path.join(TOOLS, "lab"), "client", "sysbench", test, *DB_ARGS,
                "--threads=%d" % threads, "--time=%d" % seconds, "--report-interval=1",
                "--percentile=99", "run"]
        self.log_path = log_path
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=dict(os.environ, **lab.env))

    def result(self, timeout=600):
        out, _ = self.proc.communicate(timeout=timeout)
        if self.log_path:
            with open(self.log_path, "w") as f:
                f.write(out)
        res = parse_sysbench(out)
        res["rc"] = self.proc.returncode
        if self.proc.returncode != 0 or res["transactions"] is None:
            res["error"] = out.strip()[-1500:]
        return res


class RowClient(ClientProcess):
    """tools/rowclient insert in the client namespace: numbered rows on one connection."""

    def __init__(self, lab, seconds=0, interval=0.1, log_path=None):
        args = ["/usr/bin/python3", os.path.join(TOOLS, "rowclient"), "insert",
                "--seconds", str(seconds), "--interval", str(interval)]
        if log_path:
            args += ["--log", log_path]
        super().__init__(lab, args, "rowclient")


def db_counts(lab):
    """What the guest's database holds now (tools/rowclient count)."""
    res = lab.client("/usr/bin/python3", os.path.join(TOOLS, "rowclient"), "count", timeout=120)
    try:
        return json.loads(last_line(res.stdout))
    except ValueError:
        raise AssertionError("rowclient count failed: %s%s" % (res.stdout, res.stderr))


def zero_seconds(series, until_s=None, after_s=SETUP_S):
    """The report seconds after after_s (by default the set-up) and up to until_s in which
    no transaction completed."""
    return [p["s"] for p in series
            if p["tps"] == 0 and p["s"] > after_s and (until_s is None or p["s"] <= until_s)]


def longest_stall(seconds):
    """The longest run of consecutive report seconds in a list of them."""
    best = run = 0
    prev = None
    for s in seconds:
        run = run + 1 if prev is not None and s == prev + 1 else 1
        best = max(best, run)
        prev = s
    return best


def summary_line(name, res):
    log("%s: %s tx in %s tx/s, latency avg %s p99 %s max %s ms, %d zero seconds"
        % (name, res["transactions"], res["tps"], res["lat_ms"]["avg"], res["lat_ms"]["p99"],
           res["lat_ms"]["max"], len(zero_seconds(res["series"]))))
