package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// attach sets up a read-only loop device with partitions for file and
// returns the device. losetup -P makes no partition devices on some
// kernels, and partitions that partx added stay behind after losetup -d:
// this loop device may carry a /dev/loopNp1 of an earlier disk, which
// partx -u would keep where this disk has no such partition. So: delete
// whatever is there, then add this disk's partitions.
func attach(t *testing.T, file string) string {
	t.Helper()
	loop := strings.TrimSpace(sh(t, "losetup", "-r", "--show", "-f", file))
	t.Cleanup(func() {
		exec.Command("partx", "-d", loop).Run()
		sh(t, "losetup", "-d", loop)
	})
	exec.Command("partx", "-d", loop).Run() // fails where there is nothing to delete
	sh(t, "partx", "-a", loop)
	waitFor(t, loop+"p1", 5*time.Second, func() bool { _, err := os.Stat(loop + "p1"); return err == nil })
	// Each partition device must be the size this disk's table gives it.
	for _, line := range strings.Split(strings.TrimSpace(sh(t, "partx", "-g", "-o", "NR,SECTORS", loop)), "\n") {
		var nr, sectors int
		if _, err := fmt.Sscan(line, &nr, &sectors); err != nil {
			t.Fatalf("partx: %q: %v", line, err)
		}
		size, err := os.ReadFile(fmt.Sprintf("/sys/class/block/%sp%d/size", filepath.Base(loop), nr))
		if err != nil || strings.TrimSpace(string(size)) != strconv.Itoa(sectors) {
			t.Fatalf("%sp%d: %s sectors (%v), the table says %d", loop, nr, size, err, sectors)
		}
	}
	return loop
}

// mountGuest mounts a guest partition read-only and unmounts it at cleanup.
func mountGuest(t *testing.T, dev, fstype, opts string) string {
	t.Helper()
	dir := t.TempDir()
	sh(t, "mount", "-t", fstype, "-o", opts, dev, dir)
	t.Cleanup(func() { sh(t, "umount", dir) })
	return dir
}

// TestGuestFilesystems is the whole workflow: mount the image, attach
// disk.raw to a loop device, mount the guest's partitions, and check
// every file.
func TestGuestFilesystems(t *testing.T) {
	requireFUSE(t)
	requireRoot(t)
	qemutest.Require(t, "qemu-img", "losetup", "partx")
	dir := t.TempDir()
	raw, sums := qemutest.GuestDisk(t, dir)
	for _, format := range []string{"zlib", "zstd", ""} {
		name := format
		if name == "" {
			name = "uncompressed"
		}
		t.Run(name, func(t *testing.T) {
			image := filepath.Join(dir, name+".qcow2")
			args := []string{"convert", "-q", "-f", "raw", "-O", "qcow2"}
			if format != "" {
				args = append(args, "-c", "-o", "compression_type="+format)
			}
			sh(t, "qemu-img", append(args, raw, image)...)
			mnt := mountImage(t, image)
			loop := attach(t, filepath.Join(mnt, "disk.raw"))
			ext4 := mountGuest(t, loop+"p1", "ext4", "ro,noload")
			for file, want := range sums["ext4"] {
				b, err := os.ReadFile(filepath.Join(ext4, file))
				if err != nil {
					t.Fatal(err)
				}
				if got := qemutest.SHA256(b); got != want {
					t.Errorf("ext4 %s: sha256 %s, want %s", file, got, want)
				}
			}
			// Kernels without vfat (such as this project's machines) can
			// still read the FAT partition through the loop device with
			// mtools.
			for file, want := range sums["vfat"] {
				out := filepath.Join(t.TempDir(), file)
				sh(t, "mcopy", "-n", "-i", loop+"p2", "::/"+file, out)
				b, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				if got := qemutest.SHA256(b); got != want {
					t.Errorf("vfat %s: sha256 %s, want %s", file, got, want)
				}
			}
		})
	}
}
