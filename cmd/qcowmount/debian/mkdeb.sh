#!/usr/bin/env bash
# Builds the Debian package of qcowmount from a built binary:
#
#   mkdeb.sh BINARY VERSION ARCH OUTDIR
#
# BINARY is a linux/ARCH qcowmount; VERSION is git describe's (v1.2.3,
# v1.2.3-4-gabcdef, or a bare commit), made into a Debian version. The
# man page and the completions come from the binary when it runs here
# (ARCH is this machine's), else from this machine's own build.
# It prints the path of the .deb it wrote.
set -euo pipefail
bin=$1 version=$2 arch=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)

# Debian versions start with a digit: v1.2.3-4-gabc is 1.2.3+4+gabc, a
# bare commit (which may start with a digit too) 0~git+abc, ordered
# before any release.
if [[ $version =~ ^v?[0-9]+\.[0-9] ]]; then
	debversion=${version#v} debversion=${debversion//-/+}
else
	debversion=0~git+${version//-/+}
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

# The binary that writes the docs runs on this machine.
docs=$bin
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
	docs=$root/qcowmount-here
	(cd "$top" && go build -o "$docs" ./cmd/qcowmount)
fi

pkg=$root/qcowmount
doc=$pkg/usr/share/doc/qcowmount
install -D -m 0755 "$bin" "$pkg/usr/bin/qcowmount"
install -d "$pkg/usr/share/man/man1" "$doc" \
	"$pkg/usr/share/bash-completion/completions" \
	"$pkg/usr/share/zsh/vendor-completions" \
	"$pkg/usr/share/fish/vendor_completions.d"
"$docs" man | gzip -9n >"$pkg/usr/share/man/man1/qcowmount.1.gz"
"$docs" completion bash >"$pkg/usr/share/bash-completion/completions/qcowmount"
"$docs" completion zsh >"$pkg/usr/share/zsh/vendor-completions/_qcowmount"
"$docs" completion fish >"$pkg/usr/share/fish/vendor_completions.d/qcowmount.fish"
gzip -9n <"$top/README.md" >"$doc/README.md.gz"

# Dates from the commit, so that the same commit makes the same package.
epoch=${SOURCE_DATE_EPOCH:-$(cd "$top" && git log -1 --format=%ct 2>/dev/null || date +%s)}
maintainer=${DEB_MAINTAINER:-qcowmount developers <qcowmount@users.noreply.github.com>}
{
	echo "qcowmount ($debversion) unstable; urgency=medium"
	echo
	echo "  * Built from $version."
	echo
	echo " -- $maintainer  $(date -u -R -d "@$epoch")"
} | gzip -9n >"$doc/changelog.gz"

# The copyright file: ours, then the licence of each Go module the binary
# holds, as go version -m lists them.
{
	echo "qcowmount"
	echo "Source: https://github.com/qcowmount/qcowmount"
	echo
	echo "Files: *"
	echo "Copyright: the qcowmount developers"
	echo "License: Apache-2.0"
	echo " On Debian systems, the complete text of the Apache License, Version 2.0,"
	echo " can be found in /usr/share/common-licenses/Apache-2.0."
	echo
	echo "The binary statically links these Go modules, under their licences"
	echo "(BSD-3-Clause, MIT and Apache-2.0, which Apache-2.0 code may include):"
	go version -m "$bin" | awk '$1 == "dep" { print $2 "@" $3 }' | while read -r mod; do
		dir=$(cd "$top" && go mod download -json "$mod" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
		lic=$(find "$dir" -maxdepth 1 -iname 'LICEN[CS]E*' -o -maxdepth 1 -iname 'COPYING*' | sort | head -1)
		[ -n "$lic" ] || { echo "mkdeb: no licence file in $mod ($dir)" >&2; exit 1; }
		echo
		echo "Files: Go module $mod"
		echo
		# Debian ships the Apache licence: its text is replaced by a
		# reference, up to the next rule of dashes.
		awk '/^ *Apache License *$/ { getline nxt
				if (nxt ~ /Version 2\.0, January 2004/) {
					print "Apache License 2.0: see /usr/share/common-licenses/Apache-2.0"
					skip = 1; next
				}
				print; $0 = nxt }
			skip && /^-+$/ { skip = 0 }
			!skip' "$lic" | sed 's/^$/./; s/^/ /'
	done
} >"$doc/copyright"

size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
install -d "$pkg/DEBIAN"
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: qcowmount
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: fuse3
Suggests: fuse2fs, qemu-utils
Conflicts: libqcow-utils
Section: otherosfs
Priority: optional
Homepage: https://github.com/qcowmount/qcowmount
Description: mount QEMU qcow2 disk images read-only with FUSE
 qcowmount mounts a qcow2 image (versions 1 to 3, compressed, encrypted
 with LUKS or QEMU's legacy AES, backing chains, external data files,
 snapshots) as a directory holding disk.raw, the guest disk byte for byte
 as qemu-img convert would write it, and a file for each partition and
 LVM volume inside it. It also prints an image's details, checks it,
 exports and hashes the guest disk, and reads images over HTTP(S).
 .
 libqcow-utils installs a different /usr/bin/qcowmount, so the two
 packages conflict.
CONTROL
(cd "$pkg" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
find "$pkg" -exec touch -h -d "@$epoch" {} +
mkdir -p "$out"
deb=$out/qcowmount_${debversion}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
