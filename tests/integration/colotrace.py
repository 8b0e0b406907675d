"""colotrace - QEMU's COLO trace events, read from a guest's libvirt QEMU log.

QEMU's "log" trace backend writes one line per enabled event to its stderr,
which libvirt keeps in /var/log/libvirt/qemu/NAME.log; with libvirt's
"-msg timestamp=on" every line carries the wall-clock time:

    1234@1763772000.123456:colo_send_message Send 'checkpoint-request' message

enable() switches the events on in a running QEMU (through libvirt's monitor);
checkpoints() turns the primary's log into one dict per checkpoint with the
wall-clock time (seconds) of each step of colo_do_checkpoint_transaction(),
and parts() into the duration of each part of the pause.
"""
import re

EVENTS = ("colo_send_message", "colo_receive_message", "colo_vm_state_change",
          "migration_bitmap_sync_start", "migration_bitmap_sync_end")

LINE = re.compile(r"^\d+@(\d+\.\d+):(\w+) ?(.*)$")

# (event, argument pattern) -> milestone, in the order the primary reaches them.
MILESTONES = (
    ("colo_send_message", "'checkpoint-request'", "request"),
    ("colo_receive_message", "'checkpoint-reply'", "reply"),
    ("colo_vm_state_change", "'run' => 'stop'", "stopped"),
    ("colo_send_message", "'vmstate-send'", "vmstate_send"),
    ("migration_bitmap_sync_start", "", "sync_start"),
    ("migration_bitmap_sync_end", "", "sync_end"),
    ("colo_send_message", "'vmstate-size'", "vmstate_size"),
    ("colo_receive_message", "'vmstate-received'", "received"),
    ("colo_receive_message", "'vmstate-loaded'", "loaded"),
    ("colo_vm_state_change", "'stop' => 'run'", "running"),
)

# Part of the pause -> (from milestone, to milestone).  The primary is
# stopped from "reply" (it stops right after the secondary's reply) to
# "running"; with qemu-patches 0006 it resumes at "received", so the
# secondary's load is no longer part of the pause.
PARTS = {
    "stop": ("reply", "stopped"),
    "disk_checkpoint": ("stopped", "vmstate_send"),
    "device_state_save": ("vmstate_send", "sync_start"),
    "dirty_bitmap_sync": ("sync_start", "sync_end"),
    "ram_send": ("sync_end", "vmstate_size"),
    "device_state_send": ("vmstate_size", "received"),
    "secondary_load": ("received", "loaded"),
}


def enable(lab, host, domain):
    """Switch the checkpoint trace events on in the domain's running QEMU."""
    for event in EVENTS:
        lab.virsh(host, "qemu-monitor-command", domain, "--hmp", "trace-event %s on" % event)


def events(log_text):
    """(time, event, argument) for every trace line of the log."""
    out = []
    for line in log_text.splitlines():
        m = LINE.match(line.strip())
        if m:
            out.append((float(m.group(1)), m.group(2), m.group(3)))
    return out


def checkpoints(log_text):
    """One dict milestone -> wall-clock time per complete checkpoint."""
    result, cur = [], None
    for t, event, arg in events(log_text):
        for ev, pattern, name in MILESTONES:
            if ev == event and pattern in arg:
                if name == "request":
                    cur = {}
                if cur is not None and name not in cur:
                    cur[name] = t
                if cur is not None and all(m[2] in cur for m in MILESTONES):
                    result.append(cur)
                    cur = None
                break
    return result


def parts(ckpts):
    """Per checkpoint: each part's duration in ms, plus "resume" and "pause"."""
    out = []
    for c in ckpts:
        d = {name: (c[b] - c[a]) * 1000.0 for name, (a, b) in PARTS.items()}
        # The VM runs again after whichever of the two it waited for.
        waited = c["loaded"] if c["loaded"] <= c["running"] else c["received"]
        d["resume"] = (c["running"] - waited) * 1000.0
        d["pause"] = (c["running"] - c["reply"]) * 1000.0
        out.append(d)
    return out
