#!/usr/bin/env python3
"""dist/kvm-ft.nft: the pair's ports admit the peer on its own path, and nobody else.

One lab; both hosts load dist/kvm-ft.nft (nftables, in their own namespaces) naming
each other, before the guest is protected from hostA.

  1. The guest is protected through the rules, and a client talks to it throughout.
  2. A stranger on the LAN (the client namespace) with a route to the link network
     through hostB (Linux's weak host model accepts a packet for the link address on
     any interface) cannot reach hostB's NBD export (base+1), nor kvm-ftd's port on
     the LAN address; the rules' drop counters count it.
  3. Control, in the same run: with hostB's table deleted, the same stranger reads the
     NBD export's greeting (the test can fail); the rules go back.
  4. hostA's power pulled and restored: hostB takes over, and re-protects the guest onto
     hostA through both hosts' rules (disk copy, migration, COLO channels).
The client's sequence is gapless on one connection from start to end.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (GUEST, LAN, LINK, REPO, Lab, SeqClient, guest_dir, log,  # noqa: E402
                     qemu_binary, wait_for, wait_state)

RULES = os.path.join(REPO, "dist", "kvm-ft.nft")
PORT_BASE = 9100
NBD_PORT = PORT_BASE + 1
KVMFTD_PORT = 7790
OTHER = {"hostA": "hostB", "hostB": "hostA"}

# Connect, then wait for the first bytes (an NBD server greets first): what a stranger gets.
PROBE = r"""
import json, socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    got = s.recv(8)
    print(json.dumps({"connected": True, "greeting": got.decode(errors="replace")}))
except OSError as e:
    print(json.dumps({"connected": False, "error": str(e)}))
"""


def load_rules(lab, host):
    peer = OTHER[host]
    lab.lab("exec", host, "nft", "-D", "LINK_IF=ftlink", "-D", "PEER_LINK=" + LINK[peer],
            "-D", "LAN_IF=br0", "-D", "PEER_LAN=" + LAN[peer], "-D", "KVMFTD_PORT=%d" % KVMFTD_PORT,
            "-D", "REPLICATION_PORTS=%d-%d" % (PORT_BASE, PORT_BASE + 99), "-f", RULES)


def stranger(lab, addr, port):
    res = lab.lab("client", "python3", "-c", PROBE, addr, str(port))
    got = json.loads(res.stdout.strip().splitlines()[-1])
    log("stranger -> %s:%d: %s" % (addr, port, got))
    return got


def drops(lab, host):
    """The drop rules' packet counts, by comment."""
    doc = json.loads(lab.lab("exec", host, "nft", "-j", "list", "table", "inet", "kvm_ft").stdout)
    found = {}
    for item in doc["nftables"]:
        rule = item.get("rule")
        if rule and "comment" in rule:
            for expr in rule["expr"]:
                if "counter" in expr:
                    found[rule["comment"]] = expr["counter"]["packets"]
    return found


def main():
    qemu = qemu_binary()
    gdir = guest_dir()
    lab = Lab("test_firewall")
    client = None
    try:
        lab.up()
        for host in ("hostA", "hostB"):
            load_rules(lab, host)
        lab.install_guest(qemu, gdir)
        res = lab.protect("hostA")
        assert res.returncode == 0, "ftctl protect through the rules failed: %s" % res.stderr
        wait_state(lab, "hostB", "protected", timeout=120)
        wait_for("the guest up", lambda: "GUEST UP" in lab.serial("hostA"), timeout=180)
        client = SeqClient(lab, log_path=os.path.join(lab.artifacts, "client.jsonl"))
        log("1. protected through the rules; a client talks to the guest")

        # The stranger's route to the link network: through hostB's LAN address.
        lab.lab("client", "ip", "route", "add", "192.168.100.0/24", "via", LAN["hostB"])
        before = drops(lab, "hostB")
        got = stranger(lab, LINK["hostB"], NBD_PORT)
        assert not got["connected"], "a stranger reached hostB's NBD export: %s" % got
        got = stranger(lab, LAN["hostB"], KVMFTD_PORT)
        assert not got["connected"], "a stranger reached hostB's kvm-ftd: %s" % got
        after = drops(lab, "hostB")
        log("2. hostB's drop counters: %s -> %s" % (before, after))
        assert all(after[k] > before.get(k, 0) for k in after), (before, after)

        lab.lab("exec", "hostB", "nft", "delete", "table", "inet", "kvm_ft")
        got = stranger(lab, LINK["hostB"], NBD_PORT)
        load_rules(lab, "hostB")
        assert got["connected"] and got["greeting"].startswith("NBDMAGIC"), \
            "without the rules the stranger should reach the export (control): %s" % got
        log("3. control: without hostB's rules the stranger read the NBD greeting")
        st = lab.status("hostA")
        assert st["state"] == "protected", st

        lab.lab("power-off", "hostA")
        wait_state(lab, "hostB", "degraded", timeout=60)
        lab.lab("power-on", "hostA")
        wait_state(lab, "hostA", "protected", timeout=300)
        st = wait_state(lab, "hostB", "protected", timeout=60)
        assert st["role"] == "primary", st
        log("4. hostB took over and re-protected the guest onto hostA through the rules")
        summary = client.stop()
        client = None
        log("client: %s" % summary)
        assert summary["connection_broken"] is None, summary
        assert not summary["gaps"] and not summary["repeats"] and not summary["rewinds"], summary
    finally:
        if client:
            client.stop()
        lab.down()
    log("PASS")


if __name__ == "__main__":
    main()
