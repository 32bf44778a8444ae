#!/usr/bin/env bash
# `make demo`: start local appliances, mount resilfs, write files, kill an appliance with
# SIGKILL, show that every file still reads back byte-exact and that redundancy rebuilds,
# then leave the mount up for you to explore.
set -euo pipefail
MOUNT=${RESILFS_DEMO_MOUNT:-/tmp/resilfs-demo}
SCHEME=${RESILFS_DEMO_SCHEME:-ec:4+2}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if grep -q " $MOUNT fuse" /proc/mounts; then
  say "a demo is already mounted on $MOUNT: stopping it first"
  resilfs down "$MOUNT"
fi
mkdir -p "$MOUNT"

say "resilfs up $MOUNT --scheme $SCHEME   (local appliances over shm, format, mount)"
resilfs up "$MOUNT" --scheme "$SCHEME" --capacity 512M

say "writing files: 64 MiB of random data, a copy of resilfs's own source tree"
head -c 64M /dev/urandom > "$MOUNT/random.bin"
cp -r "$(dirname "$0")/../resilfs" "$MOUNT/source"
(cd "$MOUNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > /tmp/resilfs-demo.sha256
echo "$(wc -l < /tmp/resilfs-demo.sha256) files written; their sha256 sums are in /tmp/resilfs-demo.sha256"
sync "$MOUNT/random.bin"
resilfs status "$MOUNT"

victim=$(resilfs status "$MOUNT" --json | python3 -c '
import json, sys
status = json.load(sys.stdin)
first_member = status["sets"][0]["members"][0]
print(next(a["pid"] for a in status["appliances"] if a["address"] == first_member))')
say "kill -9 $victim   (an appliance that holds data)"
kill -9 "$victim"

say "dropping the page cache, then reading every file back from the surviving appliances"
sync; echo 3 > /proc/sys/vm/drop_caches
(cd "$MOUNT" && sha256sum --quiet -c /tmp/resilfs-demo.sha256) && echo "every file reads back byte-exact"

say "resilfs status: the set is degraded, then rebuilds onto the spare appliance"
for _ in $(seq 1 60); do
  resilfs status "$MOUNT" --json | python3 -c '
import json, sys
sets = json.load(sys.stdin)["sets"]
print("  " + ", ".join(f"set {s['"'"'id'"'"']}: {s['"'"'state'"'"']}" for s in sets))
sys.exit(0 if all(s["state"] == "healthy" for s in sets) else 1)' && break
  sleep 0.5
done
resilfs status "$MOUNT"

say "a snapshot: setfattr -n user.resilfs.snapshot -v demo $MOUNT/source"
setfattr -n user.resilfs.snapshot -v demo "$MOUNT/source"
echo "changed after the snapshot" >> "$MOUNT/source/__init__.py"
diff -q "$MOUNT/.snapshots/demo/__init__.py" "$MOUNT/source/__init__.py" || true
resilfs snapshot list "$MOUNT"

say "the demo stays mounted on $MOUNT"
cat <<TEXT
  look around:   ls -l $MOUNT; resilfs status $MOUNT --watch
  snapshots:     ls $MOUNT/.snapshots/demo; resilfs snapshot restore $MOUNT/source demo
  stop it all:   resilfs down $MOUNT
TEXT
