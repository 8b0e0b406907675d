"""drbdlab - real DRBD for the lab hosts, which cannot load kernel modules.

LAB PLUMBING, not product.  On a production host kvm-ftd runs drbdadm on the host
itself.  The lab hosts are namespaces of a kernel without modules, so each lab host
runs one small TCG VM, a "DRBD node" (tools/build-guest --flavor drbd): Debian 12's
own kernel with its own drbd 8.4 module, and drbd-utils 9.22 from Debian, as a host
would have them.  The VM runs as a process of its lab host (a power pull kills it),
its eth0 carries the host's link address and reaches the other node over the lab's
dedicated link (a QEMU UDP socket netdev between the two hosts' link addresses: a
cut link cuts DRBD too), and its virtio disk is the DRBD backing device.  What the
tests run inside it (the generated resource files, drbdadm, drbdsetup) is the real
thing; only the way commands get there (a shell on a virtio-serial port) is lab's.

Two more ports connect the node to its lab host's kvm-ftd (tools/drbd-node/init):
- kvmft.runner: kvm-ftd's DRBD commands (its [drbd] command-prefix is
  tools/lab.d/drbd-node-exec) run on it, as they would on the host itself.
  RunnerService holds the port's one connection for the node's whole life and
  serves drbd-node-exec on NODE_DIR/runner-service.sock, one command at a time;
- kvmft.handler: DRBD's handler calls come out of the node on it; HandlerRelay
  runs the real kvm-ft-drbd-handler for each on the lab host (as DRBD would on
  a production host) and hands back its exit status.
"""
import base64
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time

from labtest import BUILD, LINK, TOOLS, last_line, log, run

NODE_DIR = "/var/lib/kvm-ft/drbd-node"   # inside the lab host's mount namespace
# Debian's QEMU runs the nodes: it has user networking (the patched build for the guests
# does not), through which the lab host reaches the node's qemu-nbd.
NODE_QEMU = "/usr/bin/qemu-system-x86_64"
# The lab host's 127.0.0.1:NBD_PORT is the node's qemu-nbd (QEMU forwards it).
NBD_PORT = 10809
UDP_PORT = 9390                           # the nodes' link tunnel, on the link addresses
# The test guest's 64 MiB disk fits on the device with DRBD's internal metadata after it.
BACKING_MIB = 72
HANDLER = os.path.join(BUILD, "kvm-ft", "kvm-ft-drbd-handler")
COMMAND_PREFIX = os.path.join(TOOLS, "lab.d", "drbd-node-exec")


def node_image():
    """The cached DRBD node image folder (kernel, initramfs with drbd-utils)."""
    if os.environ.get("KVMFT_DRBD_NODE"):
        return os.environ["KVMFT_DRBD_NODE"]
    return last_line(run(os.path.join(TOOLS, "build-guest"), "--flavor", "drbd",
                         timeout=1200).stdout)


class AgentError(AssertionError):
    pass


def port_shell(sock, script, token):
    """Run script in the shell on a node's port (a connected socket): (exit status,
    stdout+stderr).  The end of its output is token and the status; EOFError if the
    port closes first; the socket's own timeout applies."""
    sock.sendall(("{ %s\n} </dev/null 2>&1; echo %s $?\n" % (script, token)).encode())
    buf = b""
    while token.encode() not in buf or not buf.endswith(b"\n"):
        data = sock.recv(65536)
        if not data:
            raise EOFError
        buf += data
    out, rest = buf.split(token.encode(), 1)
    return int(rest.split()[0]), out.decode(errors="replace")


class DrbdNode:
    """One lab host's DRBD node VM and the shell on its agent port."""

    def __init__(self, lab, host, image, qemu):
        self.lab, self.host, self.image, self.qemu = lab, host, image, qemu
        self.dir = lab.path(host, NODE_DIR)
        self.sock = None
        self.proc = None
        self.seq = 0

    @property
    def serial_log(self):
        return os.path.join(self.dir, "serial.log")

    def boot(self, fresh_disk=True, timeout=120):
        os.makedirs(self.dir, exist_ok=True)
        backing = os.path.join(self.dir, "backing.raw")
        if fresh_disk or not os.path.exists(backing):
            with open(backing, "wb") as f:
                f.truncate(BACKING_MIB << 20)
        if os.path.exists(self.serial_log):
            os.rename(self.serial_log, self.serial_log + ".%d" % time.time())
        peer = "hostB" if self.host == "hostA" else "hostA"
        mac = "52:54:00:d8:bd:0%s" % ("1" if self.host == "hostA" else "2")
        args = [os.path.join(TOOLS, "lab"), "exec", self.host, self.qemu,
                "-name", "drbd-node-" + self.host, "-accel", "tcg", "-cpu", "qemu64", "-m", "192",
                "-nodefaults", "-display", "none", "-monitor", "none",
                "-kernel", os.path.join(self.image, "vmlinuz"),
                "-initrd", os.path.join(self.image, "initrd.gz"),
                "-append", "console=ttyS0 panic=-1 kvmft.ip=%s/24 kvmft.hostname=%s"
                % (LINK[self.host], self.host),
                "-serial", "file:%s/serial.log" % NODE_DIR,
                "-drive", "file=%s/backing.raw,if=virtio,format=raw,cache=none" % NODE_DIR,
                "-netdev", "socket,id=link,udp=%s:%d,localaddr=%s:%d"
                % (LINK[peer], UDP_PORT, LINK[self.host], UDP_PORT),
                "-device", "virtio-net-pci,netdev=link,mac=" + mac,
                "-netdev", "user,id=host,restrict=on,hostfwd=tcp:127.0.0.1:%d-:%d"
                % (NBD_PORT, NBD_PORT),
                "-device", "virtio-net-pci,netdev=host",
                "-device", "virtio-serial-pci",
                "-chardev", "socket,id=agent,path=%s/agent.sock,server=on,wait=off" % NODE_DIR,
                "-device", "virtserialport,chardev=agent,name=kvmft.agent",
                "-chardev", "socket,id=runner,path=%s/runner.sock,server=on,wait=off" % NODE_DIR,
                "-device", "virtserialport,chardev=runner,name=kvmft.runner",
                "-chardev", "socket,id=handler,path=%s/handler.sock,server=on,wait=off"
                % NODE_DIR,
                "-device", "virtserialport,chardev=handler,name=kvmft.handler"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "qemu.err"), "w"),
                                     env=dict(os.environ, **self.lab.env))
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.serial()
            if "DRBD NODE FAIL" in text:
                raise AssertionError("%s's DRBD node: %s" % (self.host, re.search(
                    r"DRBD NODE FAIL.*", text).group(0)))
            if "DRBD NODE UP" in text:
                break
            if self.proc.poll() is not None:
                raise AssertionError("%s's DRBD node exited %d: %s" % (
                    self.host, self.proc.returncode, self.qemu_err()))
            time.sleep(0.2)
        else:
            raise AssertionError("%s's DRBD node did not come up in %ds" % (self.host, timeout))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.path.join(self.dir, "agent.sock"))
        self.relay = HandlerRelay(self)
        self.runner = RunnerService(self)
        log("%s: DRBD node up (%s)" % (self.host, re.search(r"DRBD NODE UP (.*)", text).group(1)))

    def serial(self):
        try:
            with open(self.serial_log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def qemu_err(self):
        try:
            with open(os.path.join(self.dir, "qemu.err")) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def gone(self):
        """The VM died with its host (lab power-off): forget the connection."""
        if getattr(self, "relay", None):
            self.relay.stop()
        if getattr(self, "runner", None):
            self.runner.stop()
        if self.sock:
            self.sock.close()
        self.sock = None
        if self.proc:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None

    def sh(self, script, timeout=60, check=True):
        """Run script in the node's shell: (exit status, stdout+stderr)."""
        if not self.sock:
            raise AgentError("%s's DRBD node is not running" % self.host)
        self.seq += 1
        self.sock.settimeout(timeout)
        try:
            rc, text = port_shell(self.sock, script, "__KVMFT_RC_%d__" % self.seq)
        except socket.timeout:
            raise AgentError("%s: no answer in %ds to: %s" % (self.host, timeout, script))
        except EOFError:
            raise AgentError("%s's DRBD node closed its agent port" % self.host)
        if check and rc != 0:
            raise AgentError("%s: `%s` exited %d:\n%s" % (self.host, script, rc, text))
        return rc, text

    def put(self, path, data):
        """Write a file in the node (data: bytes or str)."""
        if isinstance(data, str):
            data = data.encode()
        b64 = base64.b64encode(data).decode()
        self.sh("mkdir -p %s && echo %s | base64 -d > %s.tmp && mv %s.tmp %s"
                % (os.path.dirname(path), b64, path, path, path))

    def events(self):
        """`drbdsetup events2 --now --statistics`: [{"kind": "resource"|..., key: value}]."""
        _, out = self.sh("drbdsetup events2 --now --statistics all")
        found = []
        for line in out.splitlines():
            words = line.split()
            if len(words) < 2 or words[0] != "exists" or words[1] == "-":
                continue
            item = {"kind": words[1]}
            for w in words[2:]:
                k, _, v = w.partition(":")
                item[k] = v
            found.append(item)
        return found

    def state(self, resource):
        """The resource's role, connection, disk, peer disk, replication, out-of-sync KiB."""
        st = {}
        for item in self.events():
            if item.get("name") != resource:
                continue
            if item["kind"] == "resource":
                st["role"] = item.get("role")
                st["suspended"] = item.get("suspended")
            elif item["kind"] == "connection":
                st["connection"] = item.get("connection")
                st["peer_role"] = item.get("role")
            elif item["kind"] == "device":
                st["disk"] = item.get("disk")
            elif item["kind"] == "peer-device":
                st["peer_disk"] = item.get("peer-disk")
                st["replication"] = item.get("replication")
                st["out_of_sync_kib"] = int(item.get("out-of-sync", "0"))
        return st

    def export(self, minor):
        """Serve /dev/drbdMINOR (this node must be its Primary) to the lab host, as NBD
        export "drbdMINOR" on the host's 127.0.0.1:NBD_PORT: what a production host's
        guest opens as the block device itself."""
        self.sh("qemu-nbd --fork --persistent --shared=4 --format=raw --cache=none "
                "--bind=10.0.2.15 --port=%d --export-name=drbd%d /dev/drbd%d"
                % (NBD_PORT, minor, minor), timeout=60)

    def unexport(self):
        self.sh("killall qemu-nbd 2>/dev/null; while pidof qemu-nbd >/dev/null; do sleep 0.1; done",
                timeout=30)

    def dmesg(self, pattern):
        _, out = self.sh("dmesg")
        return [l for l in out.splitlines() if re.search(pattern, l)]


class RunnerService:
    """LAB PLUMBING: the node's kvmft.runner port, held open, serving drbd-node-exec.

    A client sends one JSON line, the command's argv; it gets one JSON line back,
    {"status": N, "output": "..."}.  The port's shell runs one command at a time."""

    def __init__(self, node):
        self.node = node
        self.port = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.port.connect(os.path.join(node.dir, "runner.sock"))
        self.seq = 0
        path = os.path.join(node.dir, "runner-service.sock")
        if os.path.exists(path):
            os.unlink(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _run(self, argv):
        self.seq += 1
        # No deadline here: the shell runs one command at a time, as a host's DRBD takes
        # them; drbd-node-exec's own timeout (and kvm-ftd's) bounds each caller's wait.
        try:
            return port_shell(self.port, " ".join(shlex.quote(a) for a in argv),
                              "__KVMFT_RUNNER_%d__" % self.seq)
        except EOFError:
            raise OSError("the node closed its runner port")

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    argv = json.loads(conn.makefile().readline())
                    status, output = self._run(argv)
                    conn.sendall((json.dumps({"status": status, "output": output}) + "\n")
                                 .encode())
                except (OSError, ValueError) as e:
                    # The port may hold a late answer now: a broken node stays broken.
                    log("%s: DRBD node runner: %s" % (self.node.host, e))
                    self.port.close()
                    self.listener.close()
                    return

    def stop(self):
        for sock in (self.listener, self.port):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.thread.join(timeout=150)


class HandlerRelay:
    """LAB PLUMBING: DRBD's handler calls from the node, run for real on its lab host.

    Each "HANDLER name resource minor token" line from the node's kvmft.handler port
    runs build/kvm-ft/kvm-ft-drbd-handler NAME in the lab host's namespaces with
    DRBD's environment; "EXIT token status" goes back.  self.calls records
    (name, resource, status, stderr) for the tests."""

    def __init__(self, node):
        self.node = node
        self.calls = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.path.join(node.dir, "handler.sock"))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        buf = b""
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                words = line.decode(errors="replace").split()
                if len(words) != 5 or words[0] != "HANDLER":
                    continue
                _, name, resource, minor, token = words
                res = subprocess.run(
                    [os.path.join(TOOLS, "lab"), "exec", self.node.host, "env",
                     "DRBD_RESOURCE=" + resource, "DRBD_MINOR=" + minor, HANDLER, name],
                    capture_output=True, text=True, timeout=120,
                    env=dict(os.environ, **self.node.lab.env))
                self.calls.append((name, resource, res.returncode, res.stderr.strip()))
                log("%s: DRBD ran %s %s: exit %d %s" % (self.node.host, os.path.basename(HANDLER),
                                                       name, res.returncode, res.stderr.strip()))
                try:
                    self.sock.sendall(("EXIT %s %d\n" % (token, res.returncode)).encode())
                except OSError:
                    return

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=150)


class DrbdPair:
    """Both lab hosts' DRBD nodes."""

    def __init__(self, lab):
        self.image = node_image()
        self.nodes = {h: DrbdNode(lab, h, self.image, NODE_QEMU) for h in ("hostA", "hostB")}

    def __getitem__(self, host):
        return self.nodes[host]

    def configure_daemons(self, lab):
        """Point each lab host's kvm-ftd at its DRBD node ([drbd] command-prefix)."""
        for host in self.nodes:
            with open(lab.path(host, "/etc/kvm-ft/kvm-ftd.conf"), "a") as f:
                f.write("\n[drbd]\ncommand-prefix = %s\n" % COMMAND_PREFIX)
            lab.lab("daemon-kill", host[-1])
            lab.lab("daemon-start", host[-1])

    def boot(self):
        for node in self.nodes.values():
            node.boot()
        # The link tunnel is up when each node reaches the other.
        self.nodes["hostA"].sh("ping -c 1 -W 5 %s >/dev/null" % LINK["hostB"], timeout=30)

    def stop(self, artifacts=None):
        for node in self.nodes.values():
            if node.proc and node.proc.poll() is None:
                node.proc.terminate()
            node.gone()
            if artifacts and os.path.isdir(node.dir):
                dest = os.path.join(artifacts, "drbd-node-" + node.host)
                os.makedirs(dest, exist_ok=True)
                for name in os.listdir(node.dir):
                    if name.startswith("serial.log") or name == "qemu.err":
                        shutil.copy(os.path.join(node.dir, name), dest)
