#!/usr/bin/env bash
# make demo: mount testdata/demo.qcow2, show its files (disk.raw and one
# per partition), read the ext4 partition with fuse2fs as any user would,
# and, as root, mount it through a loop device; then take it all down.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=bin/qcowmount
image=testdata/demo.qcow2
mnt=$(mktemp -d /tmp/qcowmount-demo.XXXXXX)
guest=$(mktemp -d /tmp/qcowmount-guest.XXXXXX)
cleanup() {
	umount "$guest" 2>/dev/null || fusermount3 -u "$guest" 2>/dev/null || true
	"$bin" umount --wait "$mnt" 2>/dev/null || true
	rmdir "$guest" "$mnt"
}
trap cleanup EXIT
step() { printf '\n$ %s\n' "$*"; "$@"; }

step "$bin" info "$image"
step "$bin" "$image" "$mnt"
step ls -ls "$mnt"
step sfdisk -l "$mnt/disk.raw"
if command -v fuse2fs >/dev/null; then
	step fuse2fs -o ro,fakeroot "$mnt/p1.raw" "$guest"
	step ls -l "$guest"
	step cat "$guest/hello.txt"
	step fusermount3 -u "$guest"
fi
if command -v mdir >/dev/null; then
	step mdir -i "$mnt/p2.raw" ::/
	step mtype -i "$mnt/p2.raw" ::/HELLO.TXT
fi
if [ "$(id -u)" = 0 ]; then
	step mount -o loop,ro,noload "$mnt/p1.raw" "$guest"
	step ls -lR "$guest"
	step umount "$guest"
else
	echo
	echo "(not root: skipping the loop mount; run make demo as root to see it)"
fi
step "$bin" umount --wait "$mnt"
