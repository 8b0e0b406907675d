#!/usr/bin/env python3
"""The libvirt-native workflow: virsh define, lifecycle, undefine.

Everything goes through `virsh` against the lab hosts' real libvirtd; kvm-ftd
follows libvirt's domain events.  Asserts, in one lab:

- each kind of definition kvm-ft cannot protect is refused on the host where it
  was defined: `ftctl status` shows state "refused" with a message naming the
  offending element, the status element in the domain's metadata says the same,
  and nothing is prepared on the peer (no domain of that name there);
- a valid definition becomes "ready" on both hosts: kvm-ftd defines it on the
  peer by itself;
- `virsh reset` (the guest reboots) keeps it protected, the secondary following;
- `virsh metadata --set` of a new checkpoint interval changes the running
  pair's checkpoint rate; a new output mode is reported to apply at the next
  start (status element);
- `virsh start` starts it protected: the persistent definition carries kvm-ft's
  plumbing, libvirt's qemu hook has kvm-ftd set the pair up while QEMU is
  still paused, and a client's sequence is gapless;
- `virsh destroy` of a protected guest stops it on both hosts with no failover,
  and so does `virsh shutdown` (ACPI: the guest powers itself off);
- `virsh undefine` removes it from both hosts.
"""
import os
import re
import sys
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labtest import (GUEST, LAN, LINK, TOOLS, Lab, SeqClient, generation_mark, guest_dir,  # noqa: E402
                     log, qemu_binary, run, wait_for, wait_state)

STATUS_NS = "https://kvm-ft.dev/xmlns/status/1"

def add_pci_hostdev(domain):
    hostdev = ET.SubElement(domain.find("devices"), "hostdev", mode="subsystem", type="pci",
                            managed="no")
    source = ET.SubElement(hostdev, "source")
    ET.SubElement(source, "address", domain="0x0000", bus="0x00", slot="0x1f", function="0x0")


def add_second_nic(domain):
    devices = domain.find("devices")
    devices.append(ET.fromstring(ET.tostring(devices.find("interface"))))
    devices.findall("interface")[-1].find("mac").set("address", "52:54:00:c0:10:99")


def add_unreplicated_disk(domain):
    """A second writable disk, not named by any <ft:disk>."""
    devices = domain.find("devices")
    disk = ET.fromstring(ET.tostring(devices.find("disk")))
    disk.find("target").set("dev", "vdb")
    disk.find("source").set("file", "/var/lib/libvirt/images/scratch.qcow2")
    for child in list(disk):
        if child.tag == "address":
            disk.remove(child)
    devices.append(disk)


# name -> (how to break a valid definition, text the refusal must contain)
INVALID = {
    "vhost": (lambda d: d.find("devices/interface/driver").set("name", "vhost"), "vhost"),
    "multiqueue": (lambda d: d.find("devices/interface/driver").set("queues", "4"), "queues"),
    # libvirt itself refuses a shareable qcow2
    "shareable": (lambda d: (d.find("devices/disk/driver").set("type", "raw"),
                             ET.SubElement(d.find("devices/disk"), "shareable")), "shareable"),
    "readonly": (lambda d: ET.SubElement(d.find("devices/disk"), "readonly"), "readonly"),
    "vmdk": (lambda d: d.find("devices/disk/driver").set("type", "vmdk"), "vmdk"),
    "hostdev": (add_pci_hostdev, "hostdev"),
    "two-nics": (add_second_nic, "interface"),
    "unreplicated-disk": (add_unreplicated_disk, "a writable disk kvm-ft does not replicate"),
    "bad-metadata": (lambda d: d.find(".//{https://kvm-ft.dev/xmlns/1}checkpoint")
                     .set("interval-ms", "5"), "interval-ms"),
}


def base_xml(qemu, gdir, name):
    return run(os.path.join(TOOLS, "guest-xml"), "--name", name, "--qemu", qemu,
               "--guest-dir", gdir, "--interval-ms", "2000",
               "--hosts", "hostA=%s/%s,hostB=%s/%s" % (LINK["hostA"], LAN["hostA"],
                                                       LINK["hostB"], LAN["hostB"])).stdout


def define(lab, host, name, xml_text):
    path = os.path.join(lab.path(host, "/var/lib/kvm-ft"), name + ".xml")
    with open(path, "w") as f:
        f.write(xml_text)
    lab.virsh(host, "define", "/var/lib/kvm-ft/%s.xml" % name)


def domain_exists(lab, host, name):
    return lab.virsh(host, "dominfo", name, check=False).returncode == 0


def status_element(lab, host, name):
    res = lab.virsh(host, "metadata", name, STATUS_NS, check=False)
    return res.stdout.strip() if res.returncode == 0 else ""


def wait_status(lab, host, name, state, timeout=30):
    def check():
        st = lab.status(host, name)
        return st if st and st["state"] == state else None
    return wait_for("%s %s on %s" % (name, state, host), check, timeout=timeout)


def check_refusals(lab, qemu, gdir):
    for kind, (breaker, needle) in INVALID.items():
        name = "bad-" + kind
        ET.register_namespace("ft", "https://kvm-ft.dev/xmlns/1")
        doc = ET.fromstring(base_xml(qemu, gdir, name))
        breaker(doc)
        define(lab, "hostA", name, ET.tostring(doc, encoding="unicode"))
        st = wait_status(lab, "hostA", name, "refused")
        log("%s: %s" % (name, st["error"]))
        assert needle in st["error"], "%s: refusal does not mention %r: %s" % (
            name, needle, st["error"])
        meta = wait_for("the status element of %s" % name,
                        lambda: status_element(lab, "hostA", name), timeout=10)
        assert 'state="refused"' in meta and needle in meta, meta
        time.sleep(1)
        assert not domain_exists(lab, "hostB", name), "%s was prepared on hostB" % name
        assert not os.path.exists(lab.path("hostB", "/var/lib/kvm-ft/%s" % name)), name
        lab.virsh("hostA", "undefine", name)
        wait_for("%s forgotten" % name, lambda: lab.status("hostA", name) is None, timeout=10)


def check_peer_unreachable(lab, qemu, gdir):
    name = "lonely"
    lab.lab("daemon-stop", "B")
    try:
        define(lab, "hostA", name, base_xml(qemu, gdir, name))
        st = wait_status(lab, "hostA", name, "refused")
        log("%s: %s" % (name, st["error"]))
        assert "hostB" in st["error"], st
        assert not domain_exists(lab, "hostB", name)
    finally:
        lab.lab("daemon-start", "B")
    lab.virsh("hostA", "undefine", name)


FT_NS = "https://kvm-ft.dev/xmlns/1"


def ft_element(lab, host):
    """The <ft:guest> of host's persistent definition of the guest."""
    return lab.virsh(host, "metadata", GUEST, FT_NS, "--config").stdout.strip()


def ft_setting(lab, host, attribute):
    m = re.search(r"%s=['\"]([^'\"]*)['\"]" % attribute, ft_element(lab, host))
    return m.group(1) if m else None


def no_failover(lab):
    for host in ("hostA", "hostB"):
        st = lab.status(host)
        assert st and not st.get("last_failover"), "%s failed over: %s" % (host, st)


def main():
    qemu, gdir = qemu_binary(), guest_dir()
    lab = Lab("test_define")
    try:
        lab.up()
        check_refusals(lab, qemu, gdir)
        check_peer_unreachable(lab, qemu, gdir)

        # virsh define on hostA (the same disk copied to both); a reboot is a reboot
        lab.install_guest(qemu, gdir, on_reboot="restart", acpi=True)
        wait_status(lab, "hostA", GUEST, "stopped")
        wait_for("the definition on hostB", lambda: domain_exists(lab, "hostB", GUEST),
                 timeout=30)
        for host in ("hostA", "hostB"):
            meta = wait_for("ready on %s" % host, lambda h=host: re.search(
                r'state="ready"', status_element(lab, h, GUEST)), timeout=30)
            assert meta, host

        res = lab.protect("hostA")
        assert res.returncode == 0, res.stderr
        wait_state(lab, "hostB", "protected", timeout=60)
        wait_for("guest up", lambda: "GUEST UP" in lab.serial("hostA"), timeout=120)
        boots = lab.serial("hostA").count("GUEST UP")
        lab.virsh("hostA", "reset", GUEST)
        wait_for("the guest to boot again", lambda: lab.serial("hostA").count("GUEST UP") > boots,
                 timeout=120)
        time.sleep(5)
        for host in ("hostA", "hostB"):
            st = lab.status(host)
            assert st["state"] == "protected", "after a reboot on %s: %s" % (host, st)
        no_failover(lab)
        log("reset: the guest rebooted and stayed protected")

        # The checkpoint interval changes live; other changes wait for the next start.
        ft = lab.virsh("hostA", "metadata", GUEST, "https://kvm-ft.dev/xmlns/1").stdout.strip()
        faster = re.sub(r"interval-ms=['\"]\d+['\"]", 'interval-ms="200"', ft)
        assert faster != ft, ft
        before = lab.status("hostA")["checkpoints"]
        lab.virsh("hostA", "metadata", GUEST, "https://kvm-ft.dev/xmlns/1", "--key", "ft",
                  "--set", faster, "--config")
        wait_for("the new interval", lambda: lab.status("hostA")["checkpoint_interval_ms"] == 200,
                 timeout=10)
        time.sleep(3)
        taken = lab.status("hostA")["checkpoints"] - before
        assert taken >= 8, "%d checkpoints in 3 s after the interval became 200 ms" % taken
        # The peer's definition follows: whichever host runs the guest next runs it so.
        wait_for("hostB's definition to take the 200 ms interval",
                 lambda: ft_setting(lab, "hostB", "interval-ms") == "200", timeout=10)
        # And the other way: set on the secondary's host, it reaches the running primary.
        slower = re.sub(r"interval-ms=['\"]\d+['\"]", 'interval-ms="300"', ft_element(lab, "hostB"))
        lab.virsh("hostB", "metadata", GUEST, FT_NS, "--key", "ft", "--set", slower, "--config")
        wait_for("hostA to run the 300 ms interval set on hostB",
                 lambda: lab.status("hostA")["checkpoint_interval_ms"] == 300, timeout=10)
        assert ft_setting(lab, "hostA", "interval-ms") == "300"
        passive = re.sub(r"output=['\"]compare['\"]", 'output="passive"', ft_element(lab, "hostA"))
        assert "passive" in passive, passive
        lab.virsh("hostA", "metadata", GUEST, FT_NS, "--key", "ft", "--set", passive, "--config")
        meta = wait_for("the status to say what waits", lambda: re.search(
            r"next start", status_element(lab, "hostA", GUEST)), timeout=10)
        assert lab.status("hostA")["output_mode"] == "compare"
        wait_for("hostB's definition to take passive output",
                 lambda: ft_setting(lab, "hostB", "output") == "passive", timeout=10)
        no_failover(lab)
        log("metadata --set: interval applied live (%d checkpoints in 3 s) and carried to "
            "hostB; set on hostB, carried to hostA and applied there live; output mode "
            "change reported for the next start, on both hosts" % taken)

        lab.virsh("hostA", "destroy", GUEST)
        for host in ("hostA", "hostB"):
            wait_state(lab, host, "stopped", timeout=30)
            wait_for("%s not running on %s" % (GUEST, host), lambda h=host: lab.virsh(
                h, "domstate", GUEST, check=False).stdout.strip() == "shut off", timeout=30)
        no_failover(lab)
        log("destroy: stopped on both hosts, no failover")

        # virsh start: libvirt starts the derived definition paused, its qemu hook
        # has kvm-ftd protect it, and only then do the guest's CPUs run.
        assert "kvmft-qmp" in lab.virsh("hostA", "dumpxml", "--inactive", GUEST).stdout
        open(lab.path("hostA", "/var/log/libvirt/qemu/%s-serial.log" % GUEST), "w").close()
        res = lab.virsh("hostA", "start", GUEST, timeout=240, check=False)
        log("virsh start: rc=%d %s%s" % (res.returncode, res.stdout.strip(), res.stderr.strip()))
        assert res.returncode == 0, res.stderr
        a = lab.status("hostA")
        assert a["state"] == "protected" and a["role"] == "primary", a
        wait_state(lab, "hostB", "protected", timeout=30)
        wait_for("the guest to boot", lambda: "GUEST UP" in lab.serial("hostA"), timeout=120)
        client = SeqClient(lab, seconds=8)
        summary = client.result(timeout=120)
        assert summary["connection_broken"] is None and summary["replies"] >= 40, summary
        assert not summary["gaps"] and not summary["repeats"] and not summary["rewinds"], summary
        log("virsh start: protected on both hosts before the guest ran; %d replies gapless"
            % summary["replies"])

        # Until it closes its disks, the primary's may hold writes the secondary's lack.
        marks = {h: generation_mark(lab, h) for h in ("hostA", "hostB")}
        assert marks == {"hostA": "primary", "hostB": "in-sync"}, marks
        # ACPI: the guest powers itself off; kvm-ftd stops the pair, no failover.
        lab.virsh("hostA", "shutdown", GUEST)
        for host in ("hostA", "hostB"):
            wait_state(lab, host, "stopped", timeout=60)
            wait_for("%s not running on %s" % (GUEST, host), lambda h=host: lab.virsh(
                h, "domstate", GUEST, check=False).stdout.strip() == "shut off", timeout=30)
        assert "GUEST POWER BUTTON" in lab.serial("hostA"), \
            "the guest did not see the power button: %s" % lab.serial("hostA")[-500:]
        no_failover(lab)
        # Closed cleanly: the next protection copies nothing (resync_plan).
        marks = {h: generation_mark(lab, h) for h in ("hostA", "hostB")}
        assert marks == {"hostA": "in-sync", "hostB": "in-sync"}, \
            "disk marks after a clean shutdown: %s" % marks
        log("virsh shutdown: the guest powered off; stopped on both hosts, no failover, "
            "both disks marked in-sync")

        lab.virsh("hostA", "undefine", GUEST)
        for host in ("hostA", "hostB"):
            wait_for("%s gone from %s" % (GUEST, host),
                     lambda h=host: not domain_exists(lab, h, GUEST), timeout=30)
            assert lab.status(host) is None, lab.status(host)
        log("PASS: %d kinds of refusal, peer unreachable, ready on both, destroy and "
            "shutdown without failover, reboot kept protected, undefine on both" % len(INVALID))
    finally:
        lab.down()


if __name__ == "__main__":
    main()
