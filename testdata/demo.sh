#!/usr/bin/env bash
# make demo: mount testdata/demo.qcow2, show the partition table read from
# disk.raw and, as root, attach it to a loop device, mount the ext4
# partition, list its files, read the FAT partition, and detach everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=bin/qcowmount
image=testdata/demo.qcow2
mnt=$(mktemp -d /tmp/qcowmount-demo.XXXXXX)
guest=""
loop=""
cleanup() {
	[ -n "$guest" ] && { umount "$guest" 2>/dev/null || true; rmdir "$guest"; }
	[ -n "$loop" ] && { partx -d "$loop" 2>/dev/null || true; losetup -d "$loop"; }
	fusermount3 -u "$mnt" 2>/dev/null || fusermount -u "$mnt" 2>/dev/null || true
	rmdir "$mnt"
}
trap cleanup EXIT
step() { printf '\n$ %s\n' "$*"; "$@"; }

step "$bin" info "$image"
step "$bin" "$image" "$mnt"
step ls -l "$mnt"
step sfdisk -l "$mnt/disk.raw"
if [ "$(id -u)" != 0 ]; then
	echo
	echo "(not root: skipping losetup and the guest mounts; run make demo as root to see them)"
	exit 0
fi
loop=$(losetup -r -P --show -f "$mnt/disk.raw")
echo; echo "\$ losetup -r -P --show -f $mnt/disk.raw"; echo "$loop"
sleep 0.2
[ -e "${loop}p1" ] || step partx -a "$loop"
guest=$(mktemp -d /tmp/qcowmount-guest.XXXXXX)
step mount -o ro,noload "${loop}p1" "$guest"
step ls -lR "$guest"
step cat "$guest/hello.txt"
if command -v mdir >/dev/null; then
	step mdir -i "${loop}p2" ::/ 2>/dev/null
	step mtype -i "${loop}p2" ::/HELLO.TXT 2>/dev/null
fi
echo; echo "\$ umount $guest; losetup -d $loop; fusermount -u $mnt"
