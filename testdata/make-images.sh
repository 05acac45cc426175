#!/usr/bin/env bash
# Makes the images committed in testdata/ with QEMU's own tools:
#   demo.qcow2       a GPT disk with an ext4 and a FAT partition (make demo)
#   images/*.qcow2   tiny images of each kind, read by the format tests on
#                    machines without QEMU and used as fuzz seeds
#   images/*-luks.qcow2, *-aes.qcow*  encrypted, passphrase "qcowmount"
#   images/SHA256SUMS  the sha256 of `qemu-img convert -O raw` of each
#   ../qcow2/guest/testdata/lvm.qcow2  a guest that is an LVM volume group
# Needs qemu-utils, fdisk, e2fsprogs, dosfstools and mtools; root and lvm2
# for the LVM guest only.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- demo.qcow2 -----------------------------------------------------------
files=$work/files
mkdir -p "$files/docs" "$files/data"
printf 'Hello from inside a qcow2 image.\n' > "$files/hello.txt"
printf 'qcowmount demo disk: ext4 partition.\nRead me with: make demo\n' > "$files/docs/README"
seq 1 20000 > "$files/data/numbers.txt"
# Text to read from inside the guest: the GPL, whole and verbatim (see NOTICE).
head -c 300000 /usr/share/common-licenses/GPL-3 > "$files/data/gpl-excerpt.txt" 2>/dev/null ||
	yes 'filler line for the demo disk' | head -c 300000 > "$files/data/gpl-excerpt.txt"

disk=$work/demo.raw
truncate -s 8M "$disk"
sfdisk -q "$disk" <<'TABLE'
label: gpt
start=2048, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="demo-ext4"
start=10240, size=4096, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="demo-fat"
TABLE
mkfs.ext4 -q -F -L demo-ext4 -U 6a1d5b2e-2f0e-4c6b-9c43-0d3f4e5a6b7c -d "$files" "$work/p1.ext4" 4M
mkfs.vfat -n DEMOFAT -i 1234abcd -C "$work/p2.fat" 2048 >/dev/null
printf 'Hello from the FAT partition.\n' > "$work/fat.txt"
mcopy -i "$work/p2.fat" "$work/fat.txt" ::/HELLO.TXT
dd if="$work/p1.ext4" of="$disk" bs=512 seek=2048 conv=notrunc status=none
dd if="$work/p2.fat" of="$disk" bs=512 seek=10240 conv=notrunc status=none
qemu-img convert -q -c -f raw -O qcow2 -o compression_type=zstd "$disk" demo.qcow2

# --- images/ ---------------------------------------------------------------
mkdir -p images
rm -f images/*.qcow2 images/*.qcow images/*.raw
pattern() { # pattern SEED BYTES: bytes that differ from offset to offset
	head -c "$2" /dev/zero | openssl enc -aes-128-ctr -nosalt -pass "pass:$1" -pbkdf2
}
src=$work/src.raw
truncate -s 256K "$src"
pattern a 6000 | dd of="$src" bs=1 seek=1000 conv=notrunc status=none
pattern b 70000 | dd of="$src" bs=1 seek=100000 conv=notrunc status=none
pattern c 700 | dd of="$src" bs=1 seek=$((256 * 1024 - 700)) conv=notrunc status=none

qemu-img convert -q -f raw -O qcow2 -o cluster_size=512,compat=0.10 "$src" images/v2-512.qcow2
qemu-img convert -q -f raw -O qcow2 -o cluster_size=4096 "$src" images/v3-4k.qcow2
qemu-io -f qcow2 -c 'write -z 102400 16384' -c 'write -P 0x5a 4097 100' images/v3-4k.qcow2 >/dev/null
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096,compression_type=zlib "$src" images/v3-zlib.qcow2
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096,compression_type=zstd "$src" images/v3-zstd.qcow2
qemu-img create -q -f qcow2 -o cluster_size=16384,extended_l2=on images/v3-extl2.qcow2 256K
qemu-io -f qcow2 -c 'write -P 0x11 0 1024' -c 'write -P 0x22 2048 512' -c 'write -z 4096 1024' \
	-c 'write -P 0x33 20000 9000' images/v3-extl2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4096 images/v3-snapshot.qcow2 256K
qemu-io -f qcow2 -c 'write -P 0x44 0 8192' images/v3-snapshot.qcow2 >/dev/null
qemu-img snapshot -c first images/v3-snapshot.qcow2
qemu-io -f qcow2 -c 'write -P 0x55 4096 8192' images/v3-snapshot.qcow2 >/dev/null

qemu-img create -q -f qcow images/v1.qcow 256K
qemu-io -f qcow -c 'write -c -P 0x66 0 4k' -c 'write -P 0x67 8192 10000' images/v1.qcow >/dev/null

# Encrypted with the passphrase "qcowmount": LUKS (AES-128-CBC, whose key
# slots are the smallest QEMU makes), legacy AES in qcow2 and in qcow v1.
# The LUKS area also seeds the LUKS header fuzz target.
key=(--object secret,id=s0,data=qcowmount)
opts() { echo "driver=$1,file.filename=$2,encrypt.key-secret=s0"; }
qemu-img create -q "${key[@]}" -f qcow2 -o cluster_size=4096,encrypt.format=luks,encrypt.key-secret=s0,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.iter-time=10 images/v3-luks.qcow2 256K
qemu-img create -q "${key[@]}" -f qcow2 -o cluster_size=4096,encrypt.format=aes,encrypt.key-secret=s0 images/v3-aes.qcow2 256K
qemu-img create -q "${key[@]}" -f qcow -o encrypt.format=aes,encrypt.key-secret=s0 images/v1-aes.qcow 256K
for f in v3-luks.qcow2 v3-aes.qcow2; do
	qemu-io "${key[@]}" --image-opts "$(opts qcow2 images/$f)" -c 'write -P 0x71 0 4k' -c 'write -P 0x72 5000 70000' -c 'write -c -P 0x73 128k 4k' >/dev/null
done
qemu-io "${key[@]}" --image-opts "$(opts qcow images/v1-aes.qcow)" -c 'write -P 0x71 0 4k' -c 'write -P 0x72 8192 70000' >/dev/null
luks_at=$(LC_ALL=C grep -m1 -obUaP 'LUKS\xba\xbe' images/v3-luks.qcow2 | cut -d: -f1)
mkdir -p ../qcow2/encryption/testdata
# The header and the one active key slot's material (16 x 4000 bytes).
dd if=images/v3-luks.qcow2 of=../qcow2/encryption/testdata/aes-128-cbc.luks bs=4096 skip=$((luks_at / 4096)) count=17 status=none

# Tiny images of every kind, a few KiB each: the fuzz targets' seeds.
tiny=images/tiny
mkdir -p "$tiny"
rm -f "$tiny"/*
head -c 2000 "$src" > "$work/tiny.raw"
truncate -s 64K "$work/tiny.raw"
pattern d 1500 | dd of="$work/tiny.raw" bs=1 seek=40000 conv=notrunc status=none
qemu-img convert -q -f raw -O qcow2 -o cluster_size=512,compat=0.10 "$work/tiny.raw" "$tiny/v2.qcow2"
qemu-img convert -q -f raw -O qcow2 -o cluster_size=512 "$work/tiny.raw" "$tiny/v3-zero.qcow2"
qemu-io -f qcow2 -c 'write -z 1024 1024' "$tiny/v3-zero.qcow2" >/dev/null
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=512 "$work/tiny.raw" "$tiny/v3-zlib.qcow2"
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=512,compression_type=zstd "$work/tiny.raw" "$tiny/v3-zstd.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on "$tiny/v3-extl2.qcow2" 64K
qemu-io -f qcow2 -c 'write -P 0x11 512 1024' -c 'write -z 4096 512' "$tiny/v3-extl2.qcow2" >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512 "$tiny/v3-snapshot.qcow2" 64K
qemu-io -f qcow2 -c 'write -P 0x44 0 1024' "$tiny/v3-snapshot.qcow2" >/dev/null
qemu-img snapshot -c first "$tiny/v3-snapshot.qcow2"
qemu-io -f qcow2 -c 'write -P 0x55 512 1024' "$tiny/v3-snapshot.qcow2" >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512 "$tiny/v3-bitmap.qcow2" 64K
qemu-img bitmap --add "$tiny/v3-bitmap.qcow2" dirty
qemu-io -f qcow2 -c 'write -P 0x77 4096 2048' "$tiny/v3-bitmap.qcow2" >/dev/null
# A top over the zlib image, named relative to it: a chain of two.
qemu-img create -q -f qcow2 -o cluster_size=512 -b v3-zlib.qcow2 -F qcow2 "$tiny/v3-top.qcow2"
qemu-io -f qcow2 -c 'write -P 0x88 0 512' "$tiny/v3-top.qcow2" >/dev/null
qemu-img create -q -f qcow -o cluster_size=512 "$tiny/v1.qcow" 64K 2>/dev/null || qemu-img create -q -f qcow "$tiny/v1.qcow" 64K
qemu-io -f qcow -c 'write -c -P 0x66 0 4k' -c 'write -P 0x67 8192 1000' "$tiny/v1.qcow" >/dev/null

(cd images && for f in *.qcow2 *.qcow; do
	case $f in
	*-luks.qcow2 | *-aes.qcow2) qemu-img convert "${key[@]}" --image-opts "$(opts qcow2 "$f")" -O raw "$work/$f.raw" ;;
	*-aes.qcow) qemu-img convert "${key[@]}" --image-opts "$(opts qcow "$f")" -O raw "$work/$f.raw" ;;
	*) qemu-img convert -O raw "$f" "$work/$f.raw" ;;
	esac
	echo "$(sha256sum < "$work/$f.raw" | cut -d' ' -f1)  $f"
done) > images/SHA256SUMS

# --- ../qcow2/guest/testdata/lvm.qcow2 ---------------------------------------
# A guest disk that is one LVM physical volume, made with the LVM tools on a
# loop device (root) and without device-mapper: volume group vg0 with
# volumes data (2 MiB, starting "hello from vg0/data") and logs (1 MiB).
# The LVM configuration is the script's own, as the tests' is.
lvm_image() {
	local raw=$work/lvm.raw etc=$work/lvm dev
	truncate -s 8M "$raw"
	dev=$(losetup --show -f "$raw")
	mkdir -p "$etc"
	cat > "$etc/lvm.conf" <<CONF
activation { udev_sync = 0 udev_rules = 0 }
backup { backup = 0 archive = 0 }
devices { obtain_device_list_from_udev = 0 scan_lvs = 0 use_devicesfile = 0 hints = "none"
	filter = [ "a|^$dev\$|", "r|.*|" ] global_filter = [ "a|^$dev\$|", "r|.*|" ] }
CONF
	local ok=0
	(
		export LVM_SYSTEM_DIR=$etc LVM_SUPPRESS_FD_WARNINGS=1
		set -e
		pvcreate -q "$dev"
		vgcreate -q -s 1M vg0 "$dev"
		for lv in data:2M logs:1M; do
			lvcreate -q -L "${lv#*:}" -n "${lv%%:*}" vg0 --driverloaded n --activate n --zero n
		done
		pvs --noheadings --units b --nosuffix -o pe_start "$dev" > "$work/pe_start"
	) || ok=$?
	losetup -d "$dev"
	[ "$ok" = 0 ]
	printf 'hello from vg0/data' | dd of="$raw" bs=1 seek="$(tr -d ' ' < "$work/pe_start")" conv=notrunc status=none
	qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096 "$raw" ../qcow2/guest/testdata/lvm.qcow2
}
if [ "$(id -u)" = 0 ]; then
	lvm_image
else
	echo "not root: ../qcow2/guest/testdata/lvm.qcow2 kept as it is (the LVM tools need a loop device)" >&2
fi

ls -l demo.qcow2 images/ ../qcow2/guest/testdata/lvm.qcow2
