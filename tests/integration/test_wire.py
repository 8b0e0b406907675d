#!/usr/bin/env python3
"""What crosses the dedicated link: QEMU's replication channels run TLS.

  test_wire.py [ROUND...]   rounds, default: plain tls

Each round is a lab of its own.  tcpdump on hostB's link interface records every
TCP segment from before `ftctl protect` on: the first sync (the guest's whole RAM),
the checkpoints, the NBD writes and the COLO channels.  A client sends a marker line
made fresh for the round to the guest's seqd 50 times (it crosses the link in the
packets the primary mirrors to the secondary, and sits in the guest's RAM at the next
checkpoint); then, while a client talks to the guest, two more checkpoints, and the
capture ends.  The TCP payloads are
put back together per connection and searched for the marker and for a line of the
guest's init script (in its RAM since boot).

  plain  ([replication] tls = no on both hosts): the control, which shows that the
         method finds what crosses in clear: both strings must be in the capture.
  tls    ([replication] tls = yes): neither may be, although the capture holds the replication
         ports' traffic (tens of MB: the first sync).  And on hostA's link
         address, a client without the key cannot use hostB's NBD export: qemu-img
         without TLS is refused ("TLS"), and with TLS and another key the handshake
         fails; the same client reads the export in the plain round (control).
In both rounds the guest stays protected and the client's replies are gapless.
"""
import os
import signal
import struct
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (LINK, TOOLS, Lab, SeqClient, guest_dir, log, qemu_binary,  # noqa: E402
                     run_all, scenarios_asked, wait_for, wait_state)

ROUNDS = ["plain", "tls"]
PORT_BASE = 9100
NBD_PORT = PORT_BASE + 1
# The first sync sends the guest's 256 MiB but its zero pages as flags: ~100 MB here.
MIN_CAPTURED = 32 << 20
# A line of tools/guest/init: in the guest's RAM (its initramfs) from boot on.
RAM_STRING = b"ftguest counter /mnt/counter.log"
MARKER_LINES = 50

# In the client namespace: the marker to the guest's seqd, one line at a time.
SEND_MARKER = r"""
import socket, sys, time
s = socket.create_connection(("10.0.0.10", 7000), timeout=30)
f = s.makefile("rwb")
for i in range(int(sys.argv[2])):
    f.write(("%s %d\n" % (sys.argv[1], i)).encode())
    f.flush()
    f.readline()
    time.sleep(0.05)
print("sent")
"""


def tcp_streams(pcap_path):
    """{(src, sport, dst, dport): payload bytes in capture order} of an Ethernet pcap."""
    streams = {}
    with open(pcap_path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data, 0)[0]
    endian = "<" if magic in (0xa1b2c3d4, 0xa1b23c4d) else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    assert linktype == 1, "capture link type %d, not Ethernet" % linktype
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, off + 8)[0]
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 34 or pkt[12:14] != b"\x08\x00" or pkt[23] != 6:
            continue
        ihl = (pkt[14] & 0x0f) * 4
        ip_len = struct.unpack_from(">H", pkt, 16)[0]
        tcp = 14 + ihl
        sport, dport = struct.unpack_from(">HH", pkt, tcp)
        doff = (pkt[tcp + 12] >> 4) * 4
        payload = pkt[tcp + doff:14 + ip_len]
        if payload:
            key = (pkt[26:30], sport, pkt[30:34], dport)
            streams.setdefault(key, bytearray()).extend(payload)
    return streams


def nbd_client(lab, tls_dir=None):
    """qemu-img on hostA's link address reading hostB's export; (rc, output)."""
    opts = "driver=nbd,host=%s,port=%d,export=parent0" % (LINK["hostB"], NBD_PORT)
    args = ["exec", "A", "qemu-img", "info", "-U"]
    if tls_dir:
        args += ["--object", "tls-creds-psk,id=tls0,endpoint=client,username=kvmft,dir=" +
                 tls_dir]
        opts += ",tls-creds=tls0"
    res = lab.lab(*args, "--image-opts", opts, check=False)
    out = (res.stdout + res.stderr).strip()
    log("qemu-img info %s (%s): rc %d: %s" % (
        "with another key" if tls_dir else "without TLS", opts, res.returncode, out[-300:]))
    return res.returncode, out


def run_round(name, qemu, gdir):
    tls = name == "tls"
    lab = Lab("test_wire-%s" % name)
    capture = client = None
    pcap = os.path.join(lab.artifacts, "link.pcap")
    try:
        lab.up()
        for host in ("hostA", "hostB"):
            with open(lab.path(host, "/etc/kvm-ft/kvm-ftd.conf"), "a") as f:
                f.write("\n[replication]\ntls = %s\n" % ("yes" if tls else "no"))
            lab.lab("daemon-kill", host[-1])
            lab.lab("daemon-start", host[-1])
        lab.install_guest(qemu, gdir)
        capture = subprocess.Popen(
            [os.path.join(TOOLS, "lab"), "exec", "B", "tcpdump", "-Z", "root", "-ni", "ftlink",
             "-B", "65536", "-U", "-w", pcap, "tcp portrange %d-%d" % (PORT_BASE, PORT_BASE + 9)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ, **lab.env))
        time.sleep(1)
        res = lab.protect("hostA")
        assert res.returncode == 0, "ftctl protect failed: %s" % res.stderr
        wait_state(lab, "hostB", "protected", timeout=120)
        wait_for("the guest up", lambda: "GUEST UP" in lab.serial("hostA"), timeout=180)
        marker = "KVMFT-MARKER-%s" % uuid.uuid4().hex
        res = lab.lab("client", "python3", "-c", SEND_MARKER, marker, str(MARKER_LINES))
        assert "sent" in res.stdout, res.stdout + res.stderr
        # seqd's sequence is one for all connections: this client starts after the marker's.
        client = SeqClient(lab, log_path=os.path.join(lab.artifacts, "client.jsonl"))
        before = lab.status("hostA")["checkpoints"]
        wait_for("two more checkpoints",
                 lambda: lab.status("hostA")["checkpoints"] >= before + 2, timeout=60)

        if tls:
            rc, out = nbd_client(lab)
            assert rc != 0 and "TLS" in out, \
                "a client without TLS used hostB's NBD export: %s" % out
            other = os.path.join(lab.artifacts, "other-key")
            os.makedirs(other, exist_ok=True)
            with open(os.path.join(other, "keys.psk"), "w") as f:
                f.write("kvmft:%s\n" % os.urandom(32).hex())
            rc, out = nbd_client(lab, other)
            assert rc != 0, "a client with another key used hostB's NBD export: %s" % out
        else:
            rc, out = nbd_client(lab)
            assert rc == 0, "without TLS the client should read the export (control): %s" % out

        capture.send_signal(signal.SIGINT)
        err = capture.communicate(timeout=30)[1].decode(errors="replace")
        capture = None
        streams = tcp_streams(pcap)
        total = sum(len(p) for p in streams.values())
        found_marker = [k for k, p in streams.items() if marker.encode() in p]
        found_ram = [k for k, p in streams.items() if RAM_STRING in p]
        log("%s: %d connections, %d payload bytes on ports %d-%d; marker in %d, init "
            "script line in %d (tcpdump: %s)" % (name, len(streams), total, PORT_BASE,
                                                 PORT_BASE + 9, len(found_marker),
                                                 len(found_ram), err.strip()[-200:]))
        assert total >= MIN_CAPTURED, "only %d bytes captured: not the replication" % total
        if tls:
            assert not found_marker, "the marker crossed the link in clear: %s" % found_marker
            assert not found_ram, "guest RAM crossed the link in clear: %s" % found_ram
        else:
            assert found_marker and found_ram, \
                "the control round should find both in clear (marker %s, RAM %s)" % (
                    found_marker, found_ram)
        st = lab.status("hostA")
        assert st["state"] == "protected", st
        assert st["replication_tls"] is tls, "status says replication_tls %s" % (
            st["replication_tls"])
        summary = client.stop()
        client = None
        log("client: %s" % summary)
        assert summary["connection_broken"] is None, summary
        assert not summary["gaps"] and not summary["repeats"], summary
        log("PASS %s" % name)
    finally:
        if capture:
            capture.send_signal(signal.SIGINT)
            capture.wait(timeout=30)
        if client:
            client.stop()
        # The capture holds the guest's RAM: too big to keep with the logs.
        if os.path.exists(pcap):
            os.unlink(pcap)
        lab.down()


def main():
    qemu, gdir = qemu_binary(), guest_dir()
    run_all(scenarios_asked(ROUNDS), lambda name: run_round(name, qemu, gdir))


if __name__ == "__main__":
    main()
