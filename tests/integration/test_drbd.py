#!/usr/bin/env python3
"""HA level, part 1: kvm-ft's generated DRBD resources against a real DRBD 8.4 kernel.

  test_drbd.py [SCENARIO...]      (all, in this order, when none is named)

One lab; each lab host runs a DRBD node (tests/integration/drbdlab.py: Debian 12's
kernel and drbd 8.4 module, Debian's drbd-utils, in a TCG VM that is a process of
the host and whose link is the lab's dedicated link).  The resources are generated
by `ftctl drbd-config` from an HA guest's domain XML, then installed and run in the
nodes.  What kvm-ftd will do itself for an HA guest (install, bring up, promote,
start the guest; the fence-peer handler) is not built yet: here the test performs
those drbdadm steps, the operator's way, and says so in each log line.

  resources     ftctl drbd-config: the 8.4 file is accepted by the real drbdadm/drbdsetup
                on both nodes (dump, create-md, up), connects, and the initial sync runs
                to UpToDate/UpToDate with its progress read from `drbdsetup events2
                --statistics`; a wrong value in the metadata (a relative backing device,
                a handler path with a space) is refused by ftctl with a message naming it,
                and nothing is written; the same kind of mistake typed by hand into a
                resource file is refused only by drbdadm inside the node.
  mirror        protocol C: 4 MiB written on hostA's /dev/drbd10 are on hostB's backing
                disk when the write returns.
  link-cut      the link cut under a writing primary: its I/O freezes (fencing
                resource-and-stonith; no handler has answered "peer fenced"), hostB
                cannot be promoted (its disk may be stale: no promotion without fencing),
                so no split brain; the operator resumes hostA's I/O; W scattered blocks
                written alone; link back: hostB resyncs exactly W * 4 KiB and both
                copies are identical.
  verify        4 KiB planted on hostB's backing disk underneath DRBD: online verify
                (verify-alg crc32c) finds exactly that range; a disconnect/connect
                resyncs it and a second verify is clean.
  split-brain   both sides made primary across a cut (the operator forces it) and both
                write: at reconnect DRBD detects the split brain and drops the
                connection (after-sb-* disconnect: nothing discarded automatically);
                resolving it by discarding hostB's changes makes the copies identical.
"""
import hashlib
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drbdlab import DrbdPair  # noqa: E402
from labtest import (BUILD, LINK, Lab, log, run, run_all, scenarios_asked,  # noqa: E402
                     wait_for)

SCENARIOS = ["resources", "mirror", "link-cut", "verify", "split-brain"]
GUEST = "web"
RES = "kvmft-web-vda"
MINOR = 10
DEV = "/dev/drbd%d" % MINOR
FTCTL = os.path.join(BUILD, "tools", "ftctl")
BLOCK = 4096


def domain_xml(backing="/dev/vda", handler_ok=True):
    return """<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
  <metadata>
    <ft:guest xmlns:ft="https://kvm-ft.dev/xmlns/1">
      <ft:hosts>
        <ft:host name="hostA" link-address="%s"/>
        <ft:host name="hostB" link-address="%s"/>
      </ft:hosts>
      <ft:protection level="ha"/>
      <ft:ports base="9100"/>
      <ft:disk target="vda" backing-device="%s"/>
    </ft:guest>
  </metadata>
</domain>
""" % (GUEST, DEV, LINK["hostA"], LINK["hostB"], backing)


def drbd_config(xml, *args):
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
        f.write(xml)
    try:
        return run(FTCTL, "drbd-config", f.name, *args, check=False)
    finally:
        os.unlink(f.name)


def kernel_syntax(node):
    """The resource syntax for the node's running module, from its /proc/drbd."""
    _, text = node.sh("head -n 1 /proc/drbd")
    m = re.match(r"version: (\d+)\.(\d+)", text)
    assert m, "unexpected /proc/drbd: %r" % text
    return "8.4" if m.group(1) == "8" else "9"


def wait_state(node, what, timeout=120, **want):
    def matches():
        st = node.state(RES)
        return st if all(st.get(k) == v for k, v in want.items()) else None
    return wait_for("%s on %s: %s" % (what, node.host, want), matches, timeout, interval=0.5)


def wait_in_sync(pair):
    wait_state(pair["hostA"], "the pair in sync", timeout=180, connection="Connected",
               disk="UpToDate", peer_disk="UpToDate", replication="Established")


def md5_of(node, path, size):
    # O_DIRECT: a backing disk that DRBD writes below the page cache would read stale.
    assert size % (1 << 20) == 0 or size % BLOCK == 0
    bs = 1 << 20 if size % (1 << 20) == 0 else BLOCK
    _, out = node.sh("dd if=%s bs=%d count=%d iflag=direct 2>/dev/null | md5sum"
                     % (path, bs, size // bs), timeout=120)
    return out.split()[0]


def data_size(node):
    """The replicated size in bytes (DRBD keeps its internal metadata after it)."""
    for item in node.events():
        if item["kind"] == "device" and item.get("name") == RES:
            return int(item["size"]) * 1024
    raise AssertionError("%s: no device for %s" % (node.host, RES))


def assert_identical(pair):
    """hostA's device (the primary's view) and hostB's backing disk hold the same data."""
    size = data_size(pair["hostA"])
    a = md5_of(pair["hostA"], DEV, size)
    b = md5_of(pair["hostB"], "/dev/vda", size)
    assert a == b, "copies differ: hostA %s, hostB %s (%d bytes)" % (a, b, size)
    log("copies identical (%d bytes, md5 %s)" % (size, a))


def write_blocks(node, blocks, tag):
    """Write 4 KiB of distinct content at each block number, synchronously."""
    script = "; ".join(
        "printf '%%-4096s' '%s %d' | dd of=%s bs=4096 seek=%d count=1 oflag=direct conv=notrunc "
        "2>/dev/null" % (tag, b, DEV, b) for b in blocks)
    node.sh(script, timeout=300)


def scenario_resources(lab, pair, ctx):
    syntax = kernel_syntax(pair["hostA"])
    assert syntax == "8.4", "Debian 12's kernel carries drbd 8.4, this node says %s" % syntax
    # Refusals first: nothing may be written for a definition ftctl refuses.
    for xml, needle in ((domain_xml(backing="vda"), "backing-device"),):
        out = tempfile.mkdtemp()
        res = drbd_config(xml, "--drbd-version", syntax, "--out", out)
        log("ftctl drbd-config, bad metadata: rc=%d %s" % (res.returncode, res.stderr.strip()))
        assert res.returncode != 0 and needle in res.stderr, res
        assert os.listdir(out) == [], os.listdir(out)
        os.rmdir(out)
    out = tempfile.mkdtemp()
    res = drbd_config(domain_xml(), "--drbd-version", syntax, "--handler", "/usr/lib/kvm ft/h",
                      "--out", out)
    log("ftctl drbd-config, bad handler: rc=%d %s" % (res.returncode, res.stderr.strip()))
    assert res.returncode != 0 and "handler" in res.stderr and os.listdir(out) == [], res
    res = drbd_config(domain_xml(), "--drbd-version", syntax, "--out", out)
    assert res.returncode == 0, res
    assert os.listdir(out) == [RES + ".res"], os.listdir(out)
    with open(os.path.join(out, RES + ".res")) as f:
        text = f.read()
    os.unlink(os.path.join(out, RES + ".res"))
    os.rmdir(out)

    # A typo that only the kernel side catches: drbdadm's own parser takes any word there
    # (`drbdadm dump` passes it), the real `drbdsetup attach` refuses it.  The generator
    # never writes one; this is why its values are checked before anything is written.
    typo = text.replace("resource-and-stonith", "resource-and-stonit")
    assert typo != text
    node = pair["hostA"]
    node.put("/etc/drbd.d/%s.res" % RES, typo)
    node.sh("drbdadm dump %s >/dev/null" % RES)
    node.sh("drbdadm create-md --force %s" % RES)
    rc, msg = node.sh("drbdadm up %s" % RES, check=False)
    log("drbdadm up with a hand-typed typo: rc=%d %s" % (rc, msg.strip()))
    assert rc != 0 and "resource-and-stonit" in msg, msg
    node.sh("drbdadm down %s" % RES)

    for host in ("hostA", "hostB"):
        n = pair[host]
        n.put("/etc/drbd.d/%s.res" % RES, text)
        n.sh("drbdadm dump %s >/dev/null" % RES)
        n.sh("drbdadm create-md --force %s" % RES)
        n.sh("drbdadm up %s" % RES)
    log("operator step (kvm-ftd's, later): resource installed, metadata created, up on both")
    wait_state(pair["hostA"], "connection", connection="Connected")
    t0 = time.time()
    pair["hostA"].sh("drbdadm primary --force %s" % RES)
    total = None
    last_log = 0
    while True:
        st = pair["hostA"].state(RES)
        oos = st.get("out_of_sync_kib", 0)
        total = total or oos
        if st.get("peer_disk") == "UpToDate" and oos == 0:
            break
        if time.time() - last_log > 5:
            log("initial sync: %s, %d of %d KiB left" % (st.get("replication"), oos, total))
            last_log = time.time()
        assert time.time() - t0 < 600, "initial sync did not finish: %s" % st
        time.sleep(0.5)
    secs = time.time() - t0
    size = data_size(pair["hostA"])
    ctx["initial_sync_mb_per_s"] = size / secs / 1e6
    log("initial sync: %d bytes in %.1f s (%.1f MB/s)" % (size, secs, size / secs / 1e6))
    wait_state(pair["hostB"], "in sync", disk="UpToDate", peer_disk="UpToDate")
    assert_identical(pair)


def scenario_mirror(lab, pair, ctx):
    a = pair["hostA"]
    a.sh("dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null && "
         "dd if=/tmp/pattern of=%s bs=1M oflag=direct conv=notrunc 2>/dev/null" % DEV)
    _, want = a.sh("md5sum < /tmp/pattern")
    got = md5_of(pair["hostB"], "/dev/vda", 4 << 20)
    assert want.split()[0] == got, "hostB's disk does not hold the acknowledged write"
    log("protocol C: the 4 MiB acknowledged on hostA are on hostB's disk")


def cut_and_freeze(lab, pair):
    """Cut the link under the writing primary and check the fence contract."""
    a, b = pair["hostA"], pair["hostB"]
    wait_in_sync(pair)
    a.sh("dmesg -c >/dev/null; rm -f /tmp/frozen-write")
    lab.lab("cut-link")
    a.sh("(dd if=/dev/urandom of=%s bs=4096 seek=100 count=1 oflag=direct conv=notrunc "
         "2>/dev/null; echo done > /tmp/frozen-write) >/dev/null 2>&1 &" % DEV)
    st = wait_for("I/O frozen by fencing on hostA",
                  lambda: a.state(RES).get("suspended") not in (None, "no") and a.state(RES),
                  60)
    log("hostA after the cut: %s" % st)
    rc, _ = a.sh("test -e /tmp/frozen-write", check=False)
    assert rc != 0, "the write returned while the peer was neither connected nor fenced"
    assert a.dmesg(r"fence-peer"), "no fence-peer handler ran on hostA"
    wait_for("the cut seen by hostB", lambda: b.state(RES).get("connection") != "Connected", 60)
    rc, msg = b.sh("drbdadm primary %s" % RES, check=False)
    log("promoting hostB during the cut: rc=%d %s" % (rc, msg.strip().splitlines()[-1:]))
    assert rc != 0, "hostB was promoted while hostA might still write: %s" % msg
    assert b.state(RES).get("role") == "Secondary"
    return a, b


def scenario_link_cut(lab, pair, ctx):
    a, b = cut_and_freeze(lab, pair)
    log("operator step (the witness's, later): hostA resumes I/O, the peer being fenced")
    a.sh("drbdadm resume-io %s" % RES)
    wait_for("the frozen write", lambda: a.sh("test -e /tmp/frozen-write", check=False)[0] == 0,
             30)
    # W distinct blocks written alone, scattered (one per 37 blocks), plus the frozen one.
    blocks = [200 + 37 * i for i in range(256)]
    write_blocks(a, blocks, "alone")
    written = len(set(blocks + [100])) * BLOCK
    st = a.state(RES)
    log("written alone: %d bytes; hostA's out-of-sync: %d KiB" % (written, st["out_of_sync_kib"]))
    assert st["out_of_sync_kib"] * 1024 == written, st
    _, before = b.sh("cat /proc/drbd")
    nr_before = int(re.search(r"nr:(\d+)", before).group(1))
    lab.lab("restore-link")
    wait_state(b, "resync after the cut", timeout=180, disk="UpToDate", peer_disk="UpToDate",
               connection="Connected")
    _, after = b.sh("cat /proc/drbd")
    received = (int(re.search(r"nr:(\d+)", after).group(1)) - nr_before) * 1024
    log("resync after the cut: hostB received %d bytes for %d written alone" % (received, written))
    ctx["resync_bytes"], ctx["written_while_alone"] = received, written
    assert received == written, "resync moved %d bytes for %d written" % (received, written)
    assert_identical(pair)


def scenario_verify(lab, pair, ctx):
    a, b = pair["hostA"], pair["hostB"]
    wait_in_sync(pair)
    plant = 3000   # a 4 KiB block number, clear of the other scenarios' writes
    b.sh("printf '%%-4096s' planted | dd of=/dev/vda bs=4096 seek=%d count=1 conv=notrunc "
         "oflag=direct 2>/dev/null" % plant)
    a.sh("dmesg -c >/dev/null; drbdadm verify %s" % RES)
    wait_for("online verify to start", lambda: a.state(RES).get("replication") != "Established",
             30, interval=0.2)
    st = wait_state(a, "online verify", timeout=300, replication="Established")
    found = a.dmesg(r"Out of sync: start=")
    log("verify: %s; %s" % (st, found))
    assert st["out_of_sync_kib"] == 4, st
    m = re.search(r"start=(\d+), size=(\d+)", found[0]) if found else None
    assert m and int(m.group(1)) == plant * 8 and int(m.group(2)) == 8, found
    a.sh("drbdadm disconnect %s && drbdadm connect %s" % (RES, RES))
    wait_state(a, "resync of the planted block", disk="UpToDate", peer_disk="UpToDate",
               connection="Connected", replication="Established", timeout=120)
    a.sh("dmesg -c >/dev/null; drbdadm verify %s" % RES)
    time.sleep(1)
    st = wait_state(a, "second verify", timeout=300, replication="Established")
    assert st["out_of_sync_kib"] == 0 and not a.dmesg(r"Out of sync: start="), st
    assert_identical(pair)


def scenario_split_brain(lab, pair, ctx):
    a, b = cut_and_freeze(lab, pair)
    a.sh("drbdadm resume-io %s" % RES)
    log("operator step (forbidden in the product): hostB forced primary during the cut")
    b.sh("drbdadm primary --force %s" % RES)
    write_blocks(a, [4000, 4001], "hostA-alone")
    write_blocks(b, [4002], "hostB-alone")
    a.sh("dmesg -c >/dev/null")
    lab.lab("restore-link")
    wait_state(a, "split brain detected", timeout=120, connection="StandAlone")
    assert a.dmesg(r"Split-Brain detected"), a.dmesg(r"drbd")
    st_b = wait_state(b, "split brain on hostB", timeout=60, connection="StandAlone")
    # Nothing discarded automatically: each side still has its own writes.
    _, got = b.sh("dd if=%s bs=4096 skip=4002 count=1 iflag=direct 2>/dev/null | head -c 12"
                  % DEV)
    assert got.startswith("hostB-alone"), got
    log("split brain: both StandAlone (%s), each kept its writes" % st_b)
    log("operator step (ftctl resolve, later): discard hostB's changes")
    b.sh("drbdadm secondary %s && drbdadm connect --discard-my-data %s" % (RES, RES))
    a.sh("drbdadm connect %s" % RES)
    wait_state(b, "resolved", timeout=180, disk="UpToDate", peer_disk="UpToDate",
               connection="Connected")
    assert_identical(pair)


def main():
    wanted = scenarios_asked(SCENARIOS)
    if "resources" not in wanted:
        wanted = ["resources"] + wanted   # every other scenario needs the resource up
    lab = Lab("test_drbd")
    ctx = {}
    lab.up()
    pair = None
    try:
        pair = DrbdPair(lab)
        pair.boot()
        def run_one(name):
            try:
                globals()["scenario_" + name.replace("-", "_")](lab, pair, ctx)
            finally:
                lab.lab("restore-link", check=False)   # a failed cut scenario leaves it cut
        run_all(wanted, run_one)
        log("figures: %s" % ctx)
    finally:
        if pair:
            pair.stop()
        lab.down()
    log("PASS")


if __name__ == "__main__":
    main()
