#!/bin/bash
# tools/check-guest-disk must fail a disk that lost what the guest confirmed: a blob with one bit
# flipped, a counter log short of what the guest printed. It must pass the intact disk. With
# --crash-tail it passes NUL bytes ending a boot (a power loss's torn tail), and only those.
set -euo pipefail
TOOL=$1
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
cd "$t"
truncate -s 16M disk.raw
mkfs.ext4 -q -F disk.raw
printf 'BOOT test\n1\n2\n3\n' > counter.log
head -c 1048576 /dev/urandom > blob-7
for f in counter.log blob-7; do debugfs -w -R "write $f $f" disk.raw >/dev/null 2>&1; done
python3 -c '
import json, sys, zlib
data = open("blob-7", "rb").read()
json.dump({"blob-7": {"bytes": len(data), "crc32": "%08x" % zlib.crc32(data)}}, open("blobs.json", "w"))'

expect() { # expect RC WHAT ARGS...
    local want=$1 what=$2 rc=0; shift 2
    python3 "$TOOL" "$@" > out.json 2> err.txt || rc=$?
    if [ "$rc" != "$want" ]; then
        echo "FAIL: $what: exit $rc, expected $want"; cat out.json err.txt; exit 1
    fi
    echo "ok: $what"
}
expect 0 "intact disk" --blobs blobs.json --min-last 3 disk.raw
expect 1 "counter log short of what the guest printed" --min-last 4 disk.raw
bs=$(dumpe2fs -h disk.raw 2>/dev/null | awk '/^Block size:/ {print $3}')
blk=$(debugfs -R "bmap blob-7 100" disk.raw 2>/dev/null)
python3 -c '
import sys
with open("disk.raw", "r+b") as f:
    f.seek(int(sys.argv[1]) * int(sys.argv[2]) + 17)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 1]))' "$blk" "$bs"
expect 1 "one bit flipped in a blob" --blobs blobs.json disk.raw
grep -q '"blob": "blob-7"' out.json
debugfs -w -R "rm blob-7" disk.raw >/dev/null 2>&1
expect 1 "the newest blob missing" --blobs blobs.json disk.raw
echo '{"blob-7": 1}' > bad.json
expect 2 "a malformed blob list" --blobs bad.json disk.raw

# --crash-tail: a power-lost disk may end a boot's log in never-fsynced NUL bytes; nowhere else.
tail_disk() { # tail_disk LOG: a fresh disk holding that counter log
    rm -f tail.raw
    truncate -s 16M tail.raw
    mkfs.ext4 -q -F tail.raw
    printf "$1" > counter.log
    debugfs -w -R "write counter.log counter.log" tail.raw >/dev/null 2>&1
}
tail_disk 'BOOT a\n1\n2\n\0\0\0\0\nBOOT b\n1\n'
expect 1 "NUL tail without --crash-tail" tail.raw
expect 0 "NUL tail ending a boot, --crash-tail" --crash-tail tail.raw
grep -q '"torn_tail_lines": 1' out.json
tail_disk 'BOOT a\n1\n2\n\0\0\0BOOT b\n1\n'
expect 1 "NUL tail run into the next BOOT line without --crash-tail" tail.raw
expect 0 "NUL tail run into the next BOOT line, --crash-tail" --crash-tail tail.raw
grep -q '"torn_tail_lines": 1' out.json
grep -q '"boots": 2' out.json
tail_disk 'BOOT a\n1\n\0\0\n2\n'
expect 1 "NUL bytes inside a boot, --crash-tail" --crash-tail tail.raw
tail_disk 'BOOT a\n1\n\0\0BOOX b\n1\n'
expect 1 "NUL bytes run into something other than a BOOT line, --crash-tail" --crash-tail tail.raw
