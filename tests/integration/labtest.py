"""labtest - what every kvm-ft integration test needs: the lab, the guest, a client.

Tests run real QEMU guests under real libvirtd instances in the two-host lab
(tools/lab).  Everything a test starts is torn down by Lab.down(), which
tests call from a finally: block, so a failing test leaves nothing behind.
"""
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(REPO, "tools")
BUILD = os.environ.get("KVMFT_BUILD", os.path.join(REPO, "build"))
ARTIFACTS = os.environ.get("KVMFT_ARTIFACTS", os.path.join(BUILD, "test-artifacts"))
LINK = {"hostA": "192.168.100.1", "hostB": "192.168.100.2"}
# The guest's disk writers (tools/guest/init): vda's, and the second data disk's.
WRITER_PORT = {"vda": 7001, "vdb": 7004}
LAN = {"hostA": "10.0.0.1", "hostB": "10.0.0.2"}
GUEST = "ftguest"
# One lab at a time on this machine: two would fight over the namespaces and
# the two cores.  Held from Lab.up() to Lab.down(); a second lab waits.
LAB_LOCK = "/run/kvm-ft-lab.lock"


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def run(*args, check=True, timeout=300, env=None, input=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                         env=full_env, input=input)
    if check and res.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (" ".join(args), res.returncode,
                                                         res.stdout[-3000:], res.stderr[-3000:]))
    return res


def last_line(text):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else ""


def qemu_binary(patches=None):
    """The patched QEMU (built and cached by tools/build-qemu)."""
    if patches is None and os.environ.get("KVMFT_QEMU"):
        return os.environ["KVMFT_QEMU"]
    args = [os.path.join(TOOLS, "build-qemu")]
    if patches is not None:
        args += ["--patches", str(patches)]
    return last_line(run(*args, timeout=3600).stdout)


def debian_guest_dir():
    """The Debian 12 + MariaDB guest (built and cached by tools/build-debian-guest)."""
    if os.environ.get("KVMFT_DEBIAN_GUEST"):
        return os.environ["KVMFT_DEBIAN_GUEST"]
    return last_line(run(os.path.join(TOOLS, "build-debian-guest"), timeout=3600).stdout)


def guest_dir():
    if os.environ.get("KVMFT_GUEST"):
        return os.environ["KVMFT_GUEST"]
    return last_line(run(os.path.join(TOOLS, "build-guest"), timeout=1200).stdout)


class Lab:
    """The two lab hosts (tools/lab), each running libvirtd and kvm-ftd."""

    def __init__(self, name, witness=0):
        self.name = name
        # etcd members of the lab's witness host (tools/lab up --witness N); 0: none.
        self.witness = witness
        self.artifacts = os.path.join(ARTIFACTS, name)
        # tools/check runs the sanitizer build ($KVMFTD); tools/demo and tools/bench the plain one.
        self.env = {"KVMFTD": os.environ.get("KVMFTD") or os.path.join(BUILD, "kvm-ft", "kvm-ftd")}
        self.ftctl_bin = os.path.join(BUILD, "tools", "ftctl")
        # Every blob the guest confirmed (tools/guestwrite), for check_disk(): on vda, and on
        # the second data disk (install_guest(data_disk=...)).
        self.blobs = {}
        self.blobs_vdb = {}
        self.data_disk = None

    def lab(self, *args, check=True, timeout=180):
        return run(os.path.join(TOOLS, "lab"), *args, check=check, timeout=timeout, env=self.env)

    def up(self):
        self._lock = open(LAB_LOCK, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another lab is up on this machine; waiting for it")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.lab("down", check=False)
        shutil.rmtree(self.artifacts, ignore_errors=True)
        os.makedirs(self.artifacts, exist_ok=True)
        self.lab("up", *(["--witness", str(self.witness)] if self.witness else []))

    def down(self):
        res = self.lab("down", "--keep", self.artifacts, check=False)
        log("lab down (logs kept in %s)%s" % (self.artifacts, "" if res.returncode == 0
                                              else ": " + res.stderr.strip()))
        lock, self._lock = getattr(self, "_lock", None), None
        if lock:
            lock.close()
        reports = sanitizer_reports(self.artifacts)
        if reports:
            raise AssertionError("kvm-ftd sanitizer report(s):\n%s" % "\n".join(reports))

    def netns(self, host):
        """host's network namespace, which outlives its power (tools/lab)."""
        return os.environ.get("KVMFT_LAB_PREFIX", "kft-") + "host" + host[-1]

    def path(self, host, rel=""):
        root = last_line(self.lab("path", host).stdout)
        return os.path.join(root, rel.lstrip("/")) if rel else root

    def virsh(self, host, *args, check=True, timeout=60):
        return self.lab("virsh", host, *args, check=check, timeout=timeout)

    def ftctl(self, host, *args, check=True, timeout=300):
        return self.lab("exec", host, self.ftctl_bin, *args, check=check, timeout=timeout)

    def status(self, host, guest=GUEST):
        doc = self.daemon_status(host, guest)
        guests = doc.get("guests", []) if doc else []
        return guests[0] if guests else None

    def daemon_status(self, host, guest=GUEST):
        """The whole of `ftctl status --json` (the witness, the detector, the guests)."""
        res = self.ftctl(host, "status", *([guest] if guest else []), "--json", check=False,
                         timeout=30)
        return json.loads(res.stdout) if res.returncode == 0 else None

    def control(self, host, request):
        """One request to kvm-ftd's control socket, reached through the lab host's /run;
        its result (RuntimeError with kvm-ftd's message if refused)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.path(host, "/run/kvm-ftd.sock"))
            s.sendall((json.dumps(request) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        return reply["result"]

    def client(self, *args, timeout=600):
        return self.lab("client", *args, timeout=timeout)

    def guest_write(self, mib, timeout=300, disk="vda"):
        """The guest writes mib MiB of fresh data to its disk vda or its second data disk vdb
        (tools/guestwrite); the blobs are remembered for check_disk().  Returns guestwrite's
        summary."""
        res = self.client("python3", os.path.join(TOOLS, "guestwrite"), "--mb", str(mib),
                          "--port", str(WRITER_PORT[disk]), timeout=timeout)
        try:
            out = json.loads(last_line(res.stdout))
        except ValueError:
            out = {"error": (res.stdout + res.stderr).strip()[-2000:]}
        (self.blobs if disk == "vda" else self.blobs_vdb).update(out.get("blobs", {}))
        if res.returncode != 0 or out.get("error"):
            raise AssertionError("guestwrite failed: %s" % out.get("error", out))
        log("guest wrote %d MiB: %s" % (out["bytes_written"] >> 20, " ".join(out["files"])))
        return out

    def install_guest(self, qemu, gdir, interval_ms=2000, name=GUEST, workload="",
                      output="compare", on_reboot="destroy", ft=True, compare_timeout_ms=None,
                      flavor="busybox", vcpus=1, data_disk=None, acpi=False, ip=None,
                      mac=None, tap=None, port_base=None):
        """Same disk on both hosts (the secondary replicates from an identical copy),
        the definition on hostA.  flavor "debian": gdir is tools/build-debian-guest's
        folder and the disk its root disk.  data_disk "raw" or "qcow2": a second replicated
        data disk, vdb, in that format (the busybox guest needs workload "data2").  acpi: the
        guest has ACPI, so `virsh shutdown` powers it off.  ip ("10.0.0.11/24"), mac, tap
        ("ftap1") and port_base: a second guest's own (guest-xml's defaults are the first's)."""
        image = "root.qcow2" if flavor == "debian" else "disk.qcow2"
        if data_disk:
            self.data_disk = "/var/lib/libvirt/images/%s-data.%s" % (name, data_disk)
        for host in ("hostA", "hostB"):
            images = self.path(host, "/var/lib/libvirt/images")
            os.makedirs(images, exist_ok=True)
            shutil.copyfile(os.path.join(gdir, image), os.path.join(images, name + ".qcow2"))
            if data_disk:
                run("qemu-img", "convert", "-O", data_disk, os.path.join(gdir, "disk.qcow2"),
                    self.path(host, self.data_disk))
        ft_args = ["--interval-ms", str(interval_ms), "--output", output,
                   *(["--compare-timeout-ms", str(compare_timeout_ms)] if compare_timeout_ms
                     else []),
                   "--hosts", "hostA=%s/%s,hostB=%s/%s" % (LINK["hostA"], LAN["hostA"],
                                                           LINK["hostB"], LAN["hostB"])]
        xml = run(os.path.join(TOOLS, "guest-xml"), "--name", name, "--qemu", qemu,
                  "--guest-dir", gdir, "--flavor", flavor, "--vcpus", str(vcpus),
                  *(["--workload", workload] if workload else []), "--on-reboot", on_reboot,
                  *(["--data-disk", "%s:%s" % (self.data_disk, data_disk)] if data_disk else []),
                  *(["--acpi"] if acpi else []),
                  *(["--ip", ip] if ip else []), *(["--mac", mac] if mac else []),
                  *(["--tap", tap] if tap else []),
                  *(["--port-base", str(port_base)] if port_base else []),
                  *(ft_args if ft else [])).stdout
        xml_path = os.path.join(self.path("hostA", "/var/lib/kvm-ft"), name + ".xml")
        with open(xml_path, "w") as f:
            f.write(xml)
        self.virsh("hostA", "define", "/var/lib/kvm-ft/%s.xml" % name)

    def protect(self, host="hostA", name=GUEST, timeout_s=240):
        res = self.ftctl(host, "protect", name, "--timeout-s", str(timeout_s), check=False,
                         timeout=timeout_s + 30)
        log("ftctl protect: rc=%d\n%s%s" % (res.returncode, res.stdout, res.stderr))
        return res

    def serial(self, host, name=GUEST):
        try:
            with open(self.path(host, "/var/log/libvirt/qemu/%s-serial.log" % name),
                      errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def daemon_log(self, host):
        try:
            with open(self.path(host, "/var/log/kvm-ft/kvm-ftd.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def daemon_log_since(self, host, since):
        """host's kvm-ftd log lines stamped at or after `since` (epoch seconds), to the
        second: its stamps are local time without a zone."""
        lines = []
        for line in self.daemon_log(host).splitlines():
            try:
                stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
            except ValueError:
                continue  # not a log line (a sanitizer report, a continuation)
            if stamp >= int(since):
                lines.append(line)
        return lines


class EventFollower:
    """`ftctl events` on a lab host until stop(), which returns the events it printed."""

    def __init__(self, lab, host):
        self.proc = subprocess.Popen([os.path.join(TOOLS, "lab"), "exec", host, lab.ftctl_bin,
                                      "events"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True,
                                     env=dict(os.environ, **lab.env))

    def stop(self):
        # tools/lab exec ends in exec: the process is ftctl itself.
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


class ClientProcess:
    """A tool in the client namespace whose last stdout line is a JSON summary."""

    def __init__(self, lab, args, what):
        self.what = what
        self.proc = subprocess.Popen([os.path.join(TOOLS, "lab"), "client", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=dict(os.environ, **lab.env))

    def result(self, timeout=600):
        out, err = self.proc.communicate(timeout=timeout)
        try:
            return json.loads(last_line(out))
        except ValueError:
            raise AssertionError("%s gave no summary:\n%s\n%s" % (self.what, out, err))

    def stop(self):
        if self.proc.poll() is None:
            # The client runs under 'ip netns exec'; SIGTERM reaches it through
            # the wrapper, which exec()s.
            self.proc.terminate()
        return self.result(timeout=60)


class SeqClient(ClientProcess):
    """tools/seqclient in the client namespace: one TCP connection to the guest."""

    def __init__(self, lab, seconds=0, interval=0.1, log_path=None, port=7000, echo=False,
                 skip_after=0, host=None):
        args = ["python3", os.path.join(TOOLS, "seqclient"),
                "--interval", str(interval), "--seconds", str(seconds), "--port", str(port),
                *(["--host", host] if host else [])]
        if echo:
            args.append("--echo")
        if skip_after:
            args += ["--skip-after", str(skip_after)]
        if log_path:
            args += ["--log", log_path]
        super().__init__(lab, args, "seqclient")


def longest_wait(client_log):
    """Where a client's longest wait for an answer was (its log's UTC stamps), so that a
    failed silence bound can be matched with the daemons' logs."""
    stamps = [json.loads(line)["t"] for line in open(client_log)]
    if len(stamps) < 2:
        return "no answers logged"
    wait, start = max((b - a, a) for a, b in zip(stamps, stamps[1:]))
    utc = lambda t: time.strftime("%H:%M:%S", time.gmtime(t)) + ".%03d" % (t % 1 * 1000)
    return "%.0f ms from %s to %s UTC" % (wait * 1000, utc(start), utc(start + wait))


def wait_log_line(path, offset, text, timeout):
    """Follows a log from offset until a line holds text (polled every 2 ms); returns
    that line."""
    deadline = time.time() + timeout
    pending = ""
    with open(path, errors="replace") as f:
        f.seek(offset)
        while time.time() < deadline:
            pending += f.read()
            lines = pending.split("\n")
            pending = lines.pop()
            for line in lines:
                if text in line:
                    return line
            time.sleep(0.002)
    raise AssertionError("no %r in %s within %d s" % (text, path, timeout))


# What a guest prints when it is not healthy: its kernel's alarms, a disk that failed it
# (I/O errors, ext4 giving up and going read-only), the counter's failed writes.
KERNEL_TROUBLE = re.compile(r"Kernel panic|Oops|BUG:|kernel BUG|general protection fault|"
                            r"list_del corruption|list_add corruption|stack-protector|"
                            r"soft lockup|Call Trace|I/O error|EXT4-fs error|"
                            r"Remounting filesystem read-only|is not a head!|^CNT_ERR")


def kernel_trouble(serial_text):
    """The first line of a guest serial log that shows kernel trouble, or None."""
    for line in serial_text.splitlines():
        if KERNEL_TROUBLE.search(line.rstrip("\r")):
            return line
    return None


# What ASan, LSan and UBSan print first when they find something.
SANITIZER_REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: ")


def assert_kernels_clean(lab, hosts=("hostA", "hostB")):
    """Fails naming the first guest whose console shows kernel trouble."""
    for host in hosts:
        trouble = kernel_trouble(lab.serial(host))
        assert trouble is None, "guest kernel on %s: %s" % (host, trouble)


def sanitizer_reports(artifacts):
    """Sanitizer findings in the kept kvm-ftd output of both hosts, one line each."""
    found = []
    for host in ("hostA", "hostB"):
        path = os.path.join(artifacts, host, "kvm-ft", "kvm-ftd.stdout")
        try:
            with open(path, errors="replace") as f:
                found += ["%s: %s" % (host, line.strip()) for line in f
                          if SANITIZER_REPORT.search(line)]
        except FileNotFoundError:
            pass
    return found


# The guest's counter fsyncs its log every this many numbers (tools/guest/ftguest.c).
COUNTER_FSYNC_EVERY = 10


def last_count(serial_text):
    """The last "CNT i" the guest printed on its console, or None."""
    counts = re.findall(r"^CNT (\d+)\r?$", serial_text, re.M)
    return int(counts[-1]) if counts else None


def overlays_in_use(lab, host, name=GUEST):
    """The secondary's replication overlays (kvm-ftd's state dir) that host's QEMU still has
    in its block graph, or None when no QEMU runs the guest there."""
    res = lab.virsh(host, "qemu-monitor-command", name,
                    '{"execute": "query-named-block-nodes", "arguments": {"flat": true}}',
                    check=False)
    if res.returncode != 0:
        return None
    nodes = json.loads(res.stdout).get("return", [])
    return sorted({n["file"] for n in nodes if "/var/lib/kvm-ft/" in (n.get("file") or "")})


def wait_disk_consolidated(lab, host, timeout=120, name=GUEST):
    """After a takeover, QEMU commits the secondary's replication overlays into the guest's
    image (an internal job: no event, not in query-block-jobs); until the commit is done the
    image alone is a mix of the last checkpoint and later writes, not the guest's disk."""
    wait_for("%s's QEMU to commit its replication overlays" % host,
             lambda: not overlays_in_use(lab, host, name), timeout=timeout)


def check_disk(lab, host, disk="vda", name=GUEST):
    """tools/check-guest-disk on host's guest image (may be in use): fsck-clean, a gapless
    log that reaches what the guest on host printed before the image was read (less one
    fsync interval, and one for a number printed but not yet written), and every blob the
    guest wrote through lab.guest_write() intact.  disk "vdb": the second data disk, which
    has blobs and no log."""
    image = lab.path(host, "/var/lib/libvirt/images/%s.qcow2" % name if disk == "vda"
                     else lab.data_disk)
    wait_disk_consolidated(lab, host, name=name)
    args = []
    printed = last_count(lab.serial(host, name))
    if disk == "vdb":
        args.append("--no-counter")
    elif printed is not None:
        args += ["--min-last", str(max(0, printed - COUNTER_FSYNC_EVERY - 1))]
    # A running guest's image is read while QEMU writes it: a cluster written since the
    # guest's last fsync may not be in the qcow2's on-disk tables yet, so the log's last,
    # unsynced append can read as NUL bytes, as after a power cut (seen once in a full
    # check: 'bad_lines': ['\x00...'] on a survivor 1 s after its failover).  --min-last
    # still demands every number up to that fsync.
    if lab.virsh(host, "domstate", name, check=False).stdout.strip() == "running":
        args.append("--crash-tail")
    written = lab.blobs if disk == "vda" else lab.blobs_vdb
    if written:
        blobs = os.path.join(lab.artifacts, "blobs-%s.json" % disk)
        with open(blobs, "w") as f:
            json.dump(written, f)
        args += ["--blobs", blobs]
    res = run(os.path.join(TOOLS, "check-guest-disk"), *args, image, check=False, timeout=300)
    try:
        summary = json.loads(last_line(res.stdout))
    except ValueError:
        summary = {"error": res.stdout + res.stderr}
    return res.returncode == 0, summary


def fault_time(out):
    """The instant of a fault, from tools/lab's "T_<EVENT> <epoch ms>" line."""
    m = re.search(r"T_\w+ (\d+)", out)
    return int(m.group(1)) / 1000.0 if m else time.time()


def scenarios_asked(known):
    """The scenarios named on the command line (all of known if none); exits on an unknown one."""
    wanted = sys.argv[1:] or list(known)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        sys.exit("unknown scenario(s): %s (known: %s)" % (" ".join(unknown), " ".join(known)))
    return wanted


def run_all(names, run_one):
    """Runs each named scenario; a failed one is logged and the others still run.
    Exits non-zero naming the failed ones."""
    failed = []
    for name in names:
        try:
            run_one(name)
        except AssertionError as e:
            log("FAIL %s: %s" % (name, e))
            failed.append(name)
    if failed:
        sys.exit("failed: %s" % " ".join(failed))


def wait_for(what, predicate, timeout, interval=0.5):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s (last: %r)" % (timeout, what, last))


def running_copies(lab, hosts=("hostA", "hostB"), name=GUEST):
    """Hosts whose libvirt runs the guest as the guest: anything but a secondary
    (which only replays the primary, in COLO or on its way there)."""
    live = []
    for host in hosts:
        res = lab.virsh(host, "domstate", name, check=False)
        if res.returncode == 0 and res.stdout.strip() in ("running", "paused"):
            st = lab.status(host, name)
            if not st or st["role"] != "secondary":
                live.append(host)
    return live


# Where a survivor goes after a failover: alone, then (if its peer's kvm-ftd
# answers) re-protected by itself.
AFTER_FAILOVER = ("degraded", "rejoining", "resyncing", "entering-colo", "protected")


def wait_failed_over(lab, host, timeout=60, name=GUEST):
    """Waits until host runs the guest as primary after a failover; returns its status."""
    def check():
        st = lab.status(host, name)
        return (st if st and st["last_failover"] and st["role"] == "primary" and
                st["state"] in AFTER_FAILOVER else None)
    return wait_for("a failover to %s" % host, check, timeout=timeout)


def generation(lab, host, name=GUEST):
    """What host's kvm-ftd recorded of its copy of the guest's disks (resync.h): the
    protection it was last in sync in, and the mark ("in-sync", "diverged", "receiving" or
    "primary"); (None, None) without a generation file."""
    try:
        with open(lab.path(host, "/var/lib/kvm-ft/%s.generation" % name)) as f:
            words = f.read().split()
    except FileNotFoundError:
        return None, None
    return words[0], words[1] if len(words) > 1 else "in-sync"


def generation_mark(lab, host, name=GUEST):
    """The mark of generation(): None without a generation file."""
    return generation(lab, host, name)[1]


def detector_since(lab, host, since):
    """host's failure-detector rounds since `since` (epoch s), from its control socket:
    rounds, rounds skipped, lateness (nearest-rank n/p50/p99/max) and the main loop's five
    longest waits, as "WHAT (GUEST): MS ms"."""
    d = lab.control(host, {"command": "detector", "since-ms": int(since * 1000)})
    late = d["late_ms"]
    return {"rounds": d["rounds"], "skipped": d["skipped"],
            "late_ms": {"n": late["count"], "p50": late["p50"], "p99": late["p99"],
                        "max": late["max"]} if late else None,
            "longest_waits": ["%s%s: %.1f ms" % (w["what"], " (%s)" % w["guest"] if w["guest"] else "",
                                                 w["ms"]) for w in d.get("waits", [])[:5]]}


def wait_state(lab, host, state, timeout=60, name=GUEST):
    """Waits until the guest is in that kvm-ft state on host; returns its status."""
    def check():
        st = lab.status(host, name)
        return st if st and st["state"] == state else None
    return wait_for("%s %s on %s" % (name, state, host), check, timeout=timeout)
