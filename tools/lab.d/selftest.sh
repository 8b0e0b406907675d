#!/bin/bash
# tools/lab.d/selftest.sh -- exercise tools/lab end to end on this machine (root, TCG).
#   up --no-daemon; virsh on both hosts; a guest on hostA (tools/build-guest) reached from the client;
#   power-off A (processes gone, B alive, no RST/FIN seen by B or the client); power-on A;
#   cut-link/restore-link; daemon-start/stop/kill with a stub kvm-ftd; down leaves nothing;
#   down after SIGKILLing a random lab process, and after killing 'lab up' half-way; the
#   witness host (up --witness): partition full|A, isolate, heal, witness down|up.
# Uses its own prefix/dir (KVMFT_LAB_PREFIX=kftst-, KVMFT_LAB_DIR=/var/tmp/kvm-ft-lab-selftest unless
# set), so it does not touch a lab someone else runs.  Exit 0 = all checks passed.
# single-quoted bash -c scripts get "$0" on purpose:
# shellcheck disable=SC2016
set -euo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
TOOLS=$(dirname "$HERE")
LAB=$TOOLS/lab
export KVMFT_LAB_PREFIX=${KVMFT_LAB_PREFIX:-kftst-}
export KVMFT_LAB_DIR=${KVMFT_LAB_DIR:-/var/tmp/kvm-ft-lab-selftest}
P=$KVMFT_LAB_PREFIX
T=$(mktemp -d /tmp/kvmft-lab-selftest.XXXXXX)
FAILS=0

step() { printf '\n=== %s\n' "$*"; }
ok() { printf 'PASS: %s\n' "$*"; }
bad() { printf 'FAIL: %s\n' "$*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
cleanup() { "$LAB" down >/dev/null 2>&1 || true; }
trap cleanup EXIT

command -v tcpdump >/dev/null || { echo "selftest needs tcpdump (apt-get install tcpdump)" >&2; exit 2; }
[[ -x $TOOLS/build-guest ]] || { echo "selftest needs tools/build-guest" >&2; exit 2; }

step "guest (tools/build-guest)"
G=$("$TOOLS/build-guest" 2>"$T/build-guest.err" | tail -n1) || { cat "$T/build-guest.err"; exit 2; }
echo "guest: $G"
# Private copies: the shared cache may be rebuilt while we run.
cp "$G/vmlinuz" "$G/initrd.gz" "$T/"
APPEND=$(sed -n 's/^append=//p' "$G/info" 2>/dev/null)
APPEND=${APPEND:-console=ttyS0 panic=-1 kvmft.ip=10.0.0.10/24}

# --- helpers --------------------------------------------------------------------------------
cat >"$T/hold.py" <<'EOF'
# hold.py HOST PORT INTERVAL_S LOG: one TCP connection; send a line every INTERVAL, log replies/errors.
import socket, sys, time, select
host, port, iv, logf = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
log = open(logf, "a", buffering=1)
def w(m): log.write("%d %s\n" % (time.time() * 1000, m))
s = socket.create_connection((host, port), timeout=5); s.setblocking(False); w("connected")
i = 0
while True:
    i += 1
    try: s.send(b"%d\n" % i)
    except OSError as e: w("send-error %s" % e); break
    end = time.time() + iv
    while True:
        left = end - time.time()
        if left <= 0: break
        r, _, _ = select.select([s], [], [], left)
        if not r: continue
        try: d = s.recv(4096)
        except OSError as e: w("recv-error %s" % e); sys.exit(0)
        if not d: w("eof"); sys.exit(0)
        w("reply %r" % d)
EOF
wait_serial() { # wait_serial FILE PATTERN TIMEOUT
    local i
    for (( i = 0; i < $3 * 10; i++ )); do grep -aq "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}
alive_nonzombie() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1; [[ $st != Z ]]; }

# --- 1. up ------------------------------------------------------------------------------------
step "lab up --no-daemon (prefix $P, dir $KVMFT_LAB_DIR)"
"$LAB" down >/dev/null 2>&1 || true
t0=$(date +%s%N)
"$LAB" up --no-daemon
echo "up took $(( ($(date +%s%N) - t0) / 1000000 )) ms"
check "up refuses while a lab exists" bash -c '! "$0" up --no-daemon 2>/dev/null' "$LAB"
check "virsh list on hostA" "$LAB" virsh A list --all
check "virsh list on hostB" "$LAB" virsh hostB list --all
check "hostnames hostA/hostB" test "$("$LAB" exec A hostname)/$("$LAB" exec B hostname)" = hostA/hostB
check "kvm-ftd.conf hostA" grep -q '^listen-address = 192.168.100.1$' "$("$LAB" path A)/etc/kvm-ft/kvm-ftd.conf"
check "same peer key on both hosts" cmp -s "$("$LAB" path A)/etc/kvm-ft/peer.key" "$("$LAB" path B)/etc/kvm-ft/peer.key"
check "different host_uuid" test "$(grep host_uuid "$("$LAB" path A)/etc/libvirt/libvirtd.conf")" != \
    "$(grep host_uuid "$("$LAB" path B)/etc/libvirt/libvirtd.conf")"
check "IPv6 off in hostA" test "$("$LAB" exec A cat /proc/sys/net/ipv6/conf/all/disable_ipv6)" = 1
check "dedicated link A->B" "$LAB" exec A busybox ping -c1 -W2 192.168.100.2
check "client -> hostB LAN address" "$LAB" client busybox ping -c1 -W2 10.0.0.2

# --- 2. guest on hostA --------------------------------------------------------------------------
step "guest on hostA"
A=$("$LAB" path A); B=$("$LAB" path B)
cp "$G/disk.qcow2" "$A/var/lib/libvirt/images/ftest.qcow2"
cat >"$T/ftest.xml" <<EOF
<domain type='qemu'>
  <name>ftest</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$T/vmlinuz</kernel><initrd>$T/initrd.gz</initrd><cmdline>$APPEND</cmdline></os>
  <cpu mode='custom'><model>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/ftest.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <interface type='ethernet'><mac address='52:54:00:6b:66:0a'/>
      <target dev='ftap0' managed='no'/><model type='virtio'/></interface>
    <serial type='file'><source path='/var/log/libvirt/qemu/ftest-serial.log'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
"$LAB" virsh A define "$T/ftest.xml"
"$LAB" virsh A start ftest
check "guest boots (GUEST UP on serial)" wait_serial "$A/var/log/libvirt/qemu/ftest-serial.log" "GUEST UP" 90
"$LAB" client busybox ping -c2 -W3 10.0.0.10 || true
out=$(printf 'x\nx\nx\n' | "$LAB" client timeout 5 busybox nc 10.0.0.10 7000 || true)
echo "seqd replies: ${out//$'\n'/ }"
check "client reaches the guest's TCP service (3 replies)" test "$(echo "$out" | wc -l)" = 3

# --- 3. power-off A ------------------------------------------------------------------------------
step "power-off A"
"$LAB" exec A setsid -f busybox nc -ll -p 7791 -e /bin/cat </dev/null >/dev/null 2>&1
sleep 0.3
"$LAB" exec B setsid -f python3 "$T/hold.py" 192.168.100.1 7791 0.2 "$T/holdB-link.log" </dev/null >/dev/null 2>&1
"$LAB" exec B setsid -f python3 "$T/hold.py" 10.0.0.1 7791 0.2 "$T/holdB-lan.log" </dev/null >/dev/null 2>&1
"$LAB" client setsid -f python3 "$T/hold.py" 10.0.0.10 7000 0.2 "$T/holdC.log" </dev/null >/dev/null 2>&1
"$LAB" exec B setsid -f tcpdump -Z root -ni any -U -w "$T/B.pcap" tcp </dev/null >"$T/tcpdumpB.err" 2>&1
"$LAB" client setsid -f tcpdump -Z root -ni eth0 -U -w "$T/C.pcap" tcp </dev/null >"$T/tcpdumpC.err" 2>&1
sleep 2
echo "hostB connections before:"; "$LAB" exec B ss -tnH state established
"$LAB" exec B nstat -n >/dev/null; "$LAB" client nstat -n >/dev/null
APIDS=$("$LAB" pids A | tr '\n' ' ')
echo "hostA processes before:"; "$LAB" pids A -v | cut -c1-110
BLV=$(cat "$KVMFT_LAB_DIR/state/libvirtdB.pid")
"$LAB" power-off A | tee "$T/poweroff.out"
TOFF=$(awk '/^T_POWER_OFF/{print $2}' "$T/poweroff.out")
check "T_POWER_OFF printed" test -n "$TOFF"
check "no process left in hostA's netns" test -z "$("$LAB" pids A)"
left=""; for p in $APIDS; do alive_nonzombie "$p" && left+="$p "; done
check "none of hostA's former PIDs is alive ($APIDS)" test -z "$left"
check "hostB libvirtd (pid $BLV) alive and answering" "$LAB" virsh B list
check "hostA links down" test "$(ip -n "${P}hostA" -br link show lan0 | awk '{print $2}')/$(ip -n "${P}hostA" -br link show ftlink | awk '{print $2}')" = DOWN/DOWN
sleep 3
echo "hostB connections 3 s after power-off:"; "$LAB" exec B ss -tnH state established | tee "$T/ssB.out"
check "hostB's TCP connections to A still ESTABLISHED (no RST/FIN received)" test "$(grep -c ':7791' "$T/ssB.out")" = 2
check "hostB TcpEstabResets = 0" test "$("$LAB" exec B nstat -az TcpEstabResets | awk '/TcpEstabResets/{print $2}')" = 0
check "client TcpEstabResets = 0" test "$("$LAB" client nstat -az TcpEstabResets | awk '/TcpEstabResets/{print $2}')" = 0
for p in $("$LAB" pids B) $(ip netns pids "${P}client"); do
    if [[ $(cat "/proc/$p/comm" 2>/dev/null) == tcpdump ]]; then kill -INT "$p"; fi
done
sleep 0.5
echo "B capture: $(tcpdump -nr "$T/B.pcap" 2>/dev/null | wc -l) packets; client capture: $(tcpdump -nr "$T/C.pcap" 2>/dev/null | wc -l)"
rstB=$(tcpdump -nr "$T/B.pcap" 'tcp[tcpflags] & (tcp-rst|tcp-fin) != 0' 2>/dev/null | wc -l)
rstC=$(tcpdump -nr "$T/C.pcap" 'src host 10.0.0.10 and tcp[tcpflags] & (tcp-rst|tcp-fin) != 0' 2>/dev/null | wc -l)
check "no RST/FIN in hostB's capture ($rstB)" test "$rstB" = 0
check "no RST/FIN from the guest at the client ($rstC)" test "$rstC" = 0
after() { # after PCAP FILTER: packets captured after T_POWER_OFF
    tcpdump -tt -nr "$1" "$2" 2>/dev/null | awk -v t="$TOFF" '$1 * 1000 > t' | wc -l
}
echo "after T_POWER_OFF: B->A link packets $(after "$T/B.pcap" 'src 192.168.100.2 and dst 192.168.100.1')," \
     "A->B link packets $(after "$T/B.pcap" 'src 192.168.100.1')," \
     "client->guest $(after "$T/C.pcap" 'dst 10.0.0.10'), guest->client $(after "$T/C.pcap" 'src 10.0.0.10')"
check "nothing from hostA or the guest after T_POWER_OFF" \
    test "$(after "$T/B.pcap" 'src 192.168.100.1 or src 10.0.0.1')/$(after "$T/C.pcap" 'src 10.0.0.10')" = 0/0
echo "last replies seen by hostB (link, LAN) and the client, relative to T_POWER_OFF:"
for f in holdB-link holdB-lan holdC; do
    last=$(awk '$2=="reply"{t=$1} END{printf "%.0f\n", t}' "$T/$f.log")
    errs=$(grep -cv 'reply\|connected' "$T/$f.log" || true)
    echo "  $f: last reply at $(( last - TOFF )) ms, errors/eof: $errs"
    check "$f: no error/EOF after power-off" test "$errs" = 0
done

# --- 4. power-on A ------------------------------------------------------------------------------
step "power-on A"
"$LAB" power-on A
check "hostA libvirtd answers again" "$LAB" virsh A list --all
check "guest is 'shut off' after the power cycle" test "$("$LAB" virsh A domstate ftest | head -n1)" = "shut off"
check "hostA has no stale TCP state" test -z "$("$LAB" exec A ss -tnHa state all | grep -v LISTEN || true)"
check "hostA /run was emptied" test ! -e "$A/run/libvirt/qemu/ftest.xml"

# --- 5. cut-link / restore-link -------------------------------------------------------------------
step "cut-link / restore-link"
"$LAB" cut-link
check "link cut: A cannot reach B" bash -c '! "$0" exec A busybox ping -c1 -W1 192.168.100.2 >/dev/null 2>&1' "$LAB"
check "link cut: LAN still works" "$LAB" exec A busybox ping -c1 -W2 10.0.0.2
"$LAB" restore-link
check "link restored: A reaches B" "$LAB" exec A busybox ping -c1 -W2 192.168.100.2

# --- 6. daemon subcommands with a stub kvm-ftd ------------------------------------------------------
step "daemon-start/stop/kill (stub kvm-ftd)"
cat >"$T/fake-kvmftd" <<'EOF'
#!/usr/bin/python3
import sys, socket, os, signal, time, configparser
c = configparser.ConfigParser(); c.read(sys.argv[sys.argv.index('--config') + 1]); d = c['daemon']
log = open(d['log-file'], 'a', buffering=1)
log.write("stub %s on %s listen %s\n" % (d['host-name'], socket.gethostname(), d['listen-address']))
signal.signal(signal.SIGTERM, lambda *a: (log.write("SIGTERM\n"), sys.exit(0)))
s = socket.socket(socket.AF_UNIX); p = '/run/kvm-ftd.sock'
if os.path.exists(p): os.unlink(p)
s.bind(p); s.listen()
while True: time.sleep(1)
EOF
chmod +x "$T/fake-kvmftd"
export KVMFTD=$T/fake-kvmftd
check "daemon-start A" "$LAB" daemon-start A
check "daemon-start B" "$LAB" daemon-start B
check "control socket of A exists" test -S "$A/run/kvm-ftd.sock"
check "stub found its config" grep -q 'stub hostB on hostB listen 192.168.100.2' "$B/var/log/kvm-ft/kvm-ftd.log"
check "daemon-stop A (SIGTERM)" "$LAB" daemon-stop A
check "stub saw SIGTERM" grep -q SIGTERM "$A/var/log/kvm-ft/kvm-ftd.log"
check "daemon-kill B" "$LAB" daemon-kill B
"$LAB" power-off B >/dev/null
"$LAB" power-on B --daemon
check "power-on B --daemon starts kvm-ftd" test -n "$("$LAB" status | awk '/^hostB/{f=1} f && /kvm-ftd/ && /alive/{print}')"
"$LAB" status

# --- 7. down leaves nothing --------------------------------------------------------------------------
step "down --keep"
ALL=$(for n in lan hostA hostB client; do ip netns pids "$P$n" 2>/dev/null; done | tr '\n' ' ')
"$LAB" down --keep "$T/keep"
check "logs kept" test -s "$T/keep/hostA/libvirt/libvirtd.log"
check "no lab netns left" test -z "$(ip netns list | grep "^$P" || true)"
left=""; for p in $ALL; do [[ -e /proc/$p ]] && left+="$p "; done
check "none of the lab PIDs exists ($ALL)" test -z "$left"
check "lab dir removed" test ! -e "$KVMFT_LAB_DIR"
check "no veth/tap left on the machine" test -z "$(ip -br link | grep -E '^(ftlink|lan0|ftap0|hostA|hostB)' || true)"
check "down again is a no-op" "$LAB" down

# --- 8. down after a SIGKILLed lab process, and after an interrupted up --------------------------------
step "down after SIGKILL of a random lab process"
"$LAB" up --no-daemon >/dev/null
mapfile -t cand < <(for n in hostA hostB; do ip netns pids "$P$n"; done)
victim=${cand[RANDOM % ${#cand[@]}]}
echo "killing $victim ($(cat /proc/"$victim"/comm))"
kill -KILL "$victim"
ALL=$(for n in lan hostA hostB client; do ip netns pids "$P$n" 2>/dev/null; done | tr '\n' ' ')
"$LAB" status | sed -n '1,/^hostB/p'
check "down after SIGKILL" "$LAB" down
check "nothing left" test -z "$(ip netns list | grep "^$P" || true)" -a ! -e "$KVMFT_LAB_DIR"

step "down after 'lab up' killed half-way"
"$LAB" up --no-daemon >/dev/null 2>&1 &
upp=$!
for (( i = 0; i < 100; i++ )); do [[ -s $KVMFT_LAB_DIR/state/libvirtdB.pid ]] && break; sleep 0.05; done
kill -KILL "$upp"; wait "$upp" 2>/dev/null || true
echo "after killing 'lab up': netns: $(ip netns list | grep "^$P" | awk '{print $1}' | tr '\n' ' ')"
check "down after interrupted up" "$LAB" down
check "nothing left" test -z "$(ip netns list | grep "^$P" || true)" -a ! -e "$KVMFT_LAB_DIR"

# --- 9. the witness host and the partitions -------------------------------------------------------
step "up --witness; partition, isolate, heal, witness down/up"
reach() { "$LAB" exec "$1" busybox ping -c1 -W1 "$2" >/dev/null 2>&1; }
unreach() { ! reach "$@"; }
"$LAB" up --no-daemon --witness >/dev/null
check "etcd answers hostA" "$LAB" exec A etcdctl --endpoints=http://10.0.0.3:2379 endpoint health
check "kvm-ftd.conf names the witness" grep -q '^endpoints = http://10.0.0.3:2379$' "$("$LAB" path B)/etc/kvm-ft/kvm-ftd.conf"
"$LAB" partition full >/dev/null
check "partition full: A cannot reach B on the LAN" unreach A 10.0.0.2
check "partition full: nor on the link" unreach A 192.168.100.2
check "partition full: A and B reach the witness" bash -c '"$0" exec A busybox ping -c1 -W2 10.0.0.3 && "$0" exec B busybox ping -c1 -W2 10.0.0.3' "$LAB"
check "partition full: the client reaches both" bash -c '"$0" client busybox ping -c1 -W2 10.0.0.1 && "$0" client busybox ping -c1 -W2 10.0.0.2' "$LAB"
check "partition full: carriers stay up" test "$(ip -n "${P}hostA" -br link show ftlink | awk '{print $2}')" = UP
"$LAB" heal >/dev/null
check "heal: A reaches B on both paths" bash -c '"$0" exec A busybox ping -c1 -W2 10.0.0.2 && "$0" exec A busybox ping -c1 -W2 192.168.100.2' "$LAB"
"$LAB" partition A >/dev/null
check "partition A: A cannot reach the witness" unreach A 10.0.0.3
check "partition A: B can, A still reaches B" bash -c '"$0" exec B busybox ping -c1 -W2 10.0.0.3 && "$0" exec A busybox ping -c1 -W2 10.0.0.2' "$LAB"
"$LAB" heal >/dev/null
"$LAB" isolate A >/dev/null
check "isolate A: no witness, no B, no client" bash -c '! "$0" exec A busybox ping -c1 -W1 10.0.0.3 && ! "$0" exec A busybox ping -c1 -W1 192.168.100.2 && ! "$0" client busybox ping -c1 -W1 10.0.0.1' "$LAB"
check "isolate A: B reaches the witness" reach B 10.0.0.3
"$LAB" heal >/dev/null
check "heal after isolate: the client reaches A" "$LAB" client busybox ping -c1 -W2 10.0.0.1
"$LAB" witness down >/dev/null
check "witness down: gone for both hosts" bash -c '! "$0" exec A busybox ping -c1 -W1 10.0.0.3 && ! "$0" exec B busybox ping -c1 -W1 10.0.0.3' "$LAB"
"$LAB" witness up >/dev/null
check "witness up: back" bash -c 'for i in 1 2 3; do "$0" exec A busybox ping -c1 -W1 10.0.0.3 >/dev/null && exit 0; done; exit 1' "$LAB"
"$LAB" down --keep "$T/keep-witness" >/dev/null
check "witness's etcd log kept" test -s "$T/keep-witness/witness/w1.log"
check "nothing left after down (witness netns included)" test -z "$(ip netns list | grep "^$P" || true)" -a ! -e "$KVMFT_LAB_DIR"
check "no etcd left" test -z "$(pgrep -f "data-dir $KVMFT_LAB_DIR" || true)"

trap - EXIT
rm -rf "$T"
echo
if (( FAILS )); then echo "selftest: $FAILS check(s) FAILED"; exit 1; fi
echo "selftest: all checks passed"
