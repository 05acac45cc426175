package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
	"golang.org/x/sys/unix"
)

// readRange reads n bytes at off of a file.
func readRange(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("%s at %d: %v", path, off, err)
	}
	return b
}

func mountedFiles(t *testing.T, mnt string) []string {
	t.Helper()
	entries, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestPartitionFiles: beside disk.raw, a file per partition holding
// exactly its bytes, that the usual tools read directly: e2fsck, mtools,
// and (as root) a loop mount of the partition file.
func TestPartitionFiles(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "e2fsck", "mcopy")
	dir := t.TempDir()
	raw, sums := qemutest.GuestDisk(t, dir)
	for _, format := range []string{"", "zstd"} {
		t.Run("compression "+format, func(t *testing.T) {
			image := filepath.Join(t.TempDir(), "guest.qcow2")
			args := []string{"convert", "-q", "-f", "raw", "-O", "qcow2"}
			if format != "" {
				args = append(args, "-c", "-o", "compression_type="+format)
			}
			sh(t, "qemu-img", append(args, raw, image)...)
			mnt := mountImage(t, image)
			if got := strings.Join(mountedFiles(t, mnt), " "); got != "disk.raw p1.raw p2.raw" {
				t.Fatalf("files %q", got)
			}
			// The partitions as sfdisk's table places them in the raw disk.
			for name, part := range map[string][2]int64{"p1.raw": {2048 * 512, 24576 * 512}, "p2.raw": {26624 * 512, 8192 * 512}} {
				st, err := os.Stat(filepath.Join(mnt, name))
				if err != nil || st.Size() != part[1] {
					t.Fatalf("%s: %v, size %d, want %d", name, err, st.Size(), part[1])
				}
				if !bytes.Equal(readRange(t, filepath.Join(mnt, name), 0, part[1]), readRange(t, raw, part[0], part[1])) {
					t.Fatalf("%s holds other bytes than the partition", name)
				}
			}
			sh(t, "e2fsck", "-fn", filepath.Join(mnt, "p1.raw"))
			for file, want := range sums["vfat"] {
				out := filepath.Join(t.TempDir(), file)
				sh(t, "mcopy", "-n", "-i", filepath.Join(mnt, "p2.raw"), "::/"+file, out)
				if b, err := os.ReadFile(out); err != nil || qemutest.SHA256(b) != want {
					t.Errorf("vfat %s: %v", file, err)
				}
			}
			if os.Geteuid() == 0 {
				ext4 := mountGuest(t, filepath.Join(mnt, "p1.raw"), "ext4", "loop,ro,noload")
				checkFiles(t, ext4, sums["ext4"])
			}
		})
	}
	t.Run("--no-partitions", func(t *testing.T) {
		image := filepath.Join(t.TempDir(), "guest.qcow2")
		sh(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, image)
		mnt := mountImage(t, image, "--no-partitions")
		if got := strings.Join(mountedFiles(t, mnt), " "); got != "disk.raw" {
			t.Fatalf("files %q", got)
		}
	})
}

// checkFiles compares each file's sha256 under dir.
func checkFiles(t *testing.T, dir string, sums map[string]string) {
	t.Helper()
	for file, want := range sums {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if got := qemutest.SHA256(b); got != want {
			t.Errorf("%s: sha256 %s, want %s", file, got, want)
		}
	}
}

// TestLVMVolumeFiles: a qcow2 image of a disk whose partitions are LVM
// physical volumes shows each linear volume as VG-LV.raw with the bytes
// written into it; info lists the striped one as not exposed.
func TestLVMVolumeFiles(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img")
	raw := filepath.Join(t.TempDir(), "lvm.raw")
	g := qemutest.LVMDisk(t, raw)
	image := filepath.Join(t.TempDir(), "lvm.qcow2")
	sh(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, image)
	mnt := mountImage(t, image)
	if got, want := strings.Join(mountedFiles(t, mnt), " "), "disk.raw p1.raw p2.raw "+g.FileName("other")+" "+g.FileName("root")+" "+g.FileName("span"); got != want {
		t.Fatalf("files %q, want %q", got, want)
	}
	for name, want := range g.Volumes {
		got, err := os.ReadFile(filepath.Join(mnt, g.FileName(name)))
		if err != nil {
			t.Fatal(err)
		}
		if at := qemutest.FirstDiff(got, want); at >= 0 {
			t.Errorf("volume %s: byte %d differs", name, at)
		}
	}
	out, code := run(t, "info", image)
	if code != 0 || !strings.Contains(out, g.VG+"/stripes") || !strings.Contains(out, "not exposed: striped over 2 physical volumes") ||
		!strings.Contains(out, g.FileName("span")) {
		t.Fatalf("info: exit %d:\n%s", code, out)
	}
}

// TestHolesThroughTheMount: a mostly empty disk is sparse through the
// mount. qemu-img map of disk.raw (which asks lseek for data and holes)
// agrees with qemu-img map of the image, cp --sparse=always makes a sparse
// copy equal to QEMU's raw output, and du counts only the data.
func TestHolesThroughTheMount(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "qemu-io", "cp", "du")
	dir := t.TempDir()
	image := filepath.Join(dir, "sparse.qcow2")
	qemutest.Create(t, image, "qcow2", "1G")
	qemutest.IO(t, image, "write -P 1 0 64k", "write -P 2 256M 1M", "write -z 512M 64k", "write -c -P 3 768M 64k", "write -P 4 1023M 1M")
	mnt := mountImage(t, image)
	disk := filepath.Join(mnt, "disk.raw")
	dataRanges := func(args ...string) string {
		var ranges []struct {
			Start, Length int64
			Data          bool
		}
		if err := json.Unmarshal([]byte(sh(t, "qemu-img", append([]string{"map", "--output=json"}, args...)...)), &ranges); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for i := 0; i < len(ranges); i++ {
			// Adjacent ranges of the same kind are one run.
			r := ranges[i]
			for i+1 < len(ranges) && ranges[i+1].Data == r.Data {
				i++
				r.Length += ranges[i].Length
			}
			if r.Data {
				fmt.Fprintf(&b, "[%d,+%d) ", r.Start, r.Length)
			}
		}
		return b.String()
	}
	if got, want := dataRanges("-f", "raw", disk), dataRanges(image); got != want {
		t.Fatalf("data in disk.raw: %s\nqemu-img map of the image: %s", got, want)
	}
	copied := filepath.Join(dir, "copy.raw")
	start := time.Now()
	sh(t, "cp", "--sparse=always", disk, copied)
	took := time.Since(start)
	cmpFiles(t, copied, qemutest.Raw(t, image))
	var st syscall.Stat_t
	if err := syscall.Stat(copied, &st); err != nil {
		t.Fatal(err)
	}
	t.Logf("cp --sparse=always of a 1 GiB disk with 2.1 MiB of data: %v, %d KiB allocated", took, st.Blocks/2)
	if st.Blocks*512 > 16<<20 {
		t.Fatalf("the copy takes %d KiB: not sparse", st.Blocks/2)
	}
	if err := syscall.Stat(disk, &st); err != nil || st.Blocks*512 != (64<<10+1<<20+64<<10+1<<20) {
		t.Fatalf("disk.raw: st_blocks %d (%d bytes), want the data only: %v", st.Blocks, st.Blocks*512, err)
	}
}

// TestRootlessFlow is the README's first flow as an ordinary user (no
// root, no sudo): mount the image in the home directory, mount the ext4
// partition's file with fuse2fs, read every file.
func TestRootlessFlow(t *testing.T) {
	requireFUSE(t)
	requireRoot(t) // to create the user, and to open /dev/fuse to others for the test
	qemutest.Require(t, "qemu-img", "fuse2fs", "useradd", "userdel", "runuser", "fusermount3")
	name := fmt.Sprintf("qcowmount-test-%d", os.Getpid())
	sh(t, "useradd", "--create-home", "--shell", "/bin/sh", name)
	t.Cleanup(func() { exec.Command("userdel", "--remove", name).Run() })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	raw, sums := qemutest.GuestDisk(t, t.TempDir())
	home := u.HomeDir
	image := filepath.Join(home, "guest.qcow2")
	sh(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, image)
	binary := filepath.Join(home, "qcowmount")
	b, err := os.ReadFile(plainBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(binary, b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{image, binary} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	as := func(args ...string) (string, error) {
		cmd := exec.Command("runuser", append([]string{"-u", name, "--"}, args...)...)
		cmd.Dir = home
		cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+home) // the user's, where its mounts log
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	q, g := filepath.Join(home, "q"), filepath.Join(home, "guest")
	if out, err := as("mkdir", q, g); err != nil {
		t.Fatalf("mkdir: %v: %s", err, out)
	}
	// fusermount's reasons reach the user, with what to do.
	refused := func(what, want string, args ...string) {
		t.Helper()
		out, err := as(append([]string{binary}, args...)...)
		if err == nil || !strings.Contains(out, want) || strings.Contains(out, "code 256") {
			t.Errorf("%s: %v: output %q does not say %q", what, err, out, want)
		}
	}
	// Debian ships /dev/fuse open to all (0666); this machine has 0600.
	// Cleanup puts the mode back after the mounts are gone (cleanups run
	// last added first) and before the lock is released.
	holdMachineLock(t, "dev-fuse-mode")
	if st, err := os.Stat("/dev/fuse"); err == nil && st.Mode().Perm() != 0o666 {
		refused("/dev/fuse closed to the user", "failed to open /dev/fuse: Permission denied: make /dev/fuse usable", image, q)
		if err := os.Chmod("/dev/fuse", 0o666); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod("/dev/fuse", st.Mode().Perm()) })
	}
	if conf, _ := os.ReadFile("/etc/fuse.conf"); !bytes.Contains(conf, []byte("\nuser_allow_other")) && !bytes.HasPrefix(conf, []byte("user_allow_other")) {
		refused("allow_other without user_allow_other", "add user_allow_other to /etc/fuse.conf", image, q, "-o", "allow_other")
	}
	refused("an option nobody knows", "unknown option", image, q, "-o", "frobnicate")
	start := time.Now()
	if out, err := as(binary, image, q); err != nil {
		t.Fatalf("qcowmount as %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { as("fusermount3", "-u", q) })
	if out, err := as("fuse2fs", "-o", "ro,fakeroot", filepath.Join(q, "p1.raw"), g); err != nil {
		t.Fatalf("fuse2fs as %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { as("fusermount3", "-u", g) })
	ready := time.Since(start)
	for file, want := range sums["ext4"] {
		out, err := as("sha256sum", filepath.Join(g, file))
		if err != nil {
			t.Fatalf("reading %s as %s: %v: %s", file, name, err, out)
		}
		if got, _, _ := strings.Cut(out, " "); got != want {
			t.Errorf("%s: sha256 %s, want %s", file, got, want)
		}
	}
	t.Logf("rootless flow: qcowmount and fuse2fs mounted in %v, then %d files read and checked", ready, len(sums["ext4"]))
	if out, err := as("fusermount3", "-u", g); err != nil {
		t.Fatalf("fusermount3 -u %s: %v: %s", g, err, out)
	}
	// fuse2fs lets go of p1.raw a moment after its unmount returns.
	if out, err := as(binary, "umount", "--wait", q); err != nil {
		t.Fatalf("qcowmount umount --wait %s: %v: %s", q, err, out)
	}

	// The edit flow: a file of the guest changed through fuse2fs, the
	// changes in an overlay in the user's home, the image untouched.
	qemutest.NeverWritten(t, image)
	changes := filepath.Join(home, "changes.qcow2")
	steps := [][]string{
		{binary, "--overlay", changes, image, q},
		{"fuse2fs", "-o", "rw,fakeroot", filepath.Join(q, "p1.raw"), g},
		{"sh", "-c", "echo edited by the user > " + filepath.Join(g, "hello.txt")},
		{"fusermount3", "-u", g},
		{binary, "umount", "--wait", q},
		{"qemu-img", "check", changes},
		{binary, changes, q},
		{"fuse2fs", "-o", "ro,fakeroot", filepath.Join(q, "p1.raw"), g},
		{"cat", filepath.Join(g, "hello.txt")},
		{"fusermount3", "-u", g},
		{binary, "umount", "--wait", q},
	}
	for _, step := range steps {
		out, err := as(step...)
		if err != nil {
			t.Fatalf("%s as %s: %v: %s", strings.Join(step, " "), name, err, out)
		}
		if step[0] == "cat" && out != "edited by the user\n" {
			t.Errorf("hello.txt read back from the overlay: %q", out)
		}
	}
}

// TestPreallocatedImageThroughTheMount: an image made with
// preallocation=metadata allocates every cluster over holes of its file;
// disk.raw shows those as holes (SEEK_DATA, st_blocks), as qemu-img map
// shows them reading as zeros, so that du, cp --sparse and tar -S see
// the megabyte written, not the whole disk.
func TestPreallocatedImageThroughTheMount(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "qemu-io")
	image := filepath.Join(t.TempDir(), "prealloc.qcow2")
	qemutest.Create(t, image, "qcow2", "1G", "preallocation=metadata")
	qemutest.IO(t, image, "write -P 7 100M 1M")
	var ranges []struct {
		Start, Length int64
		Zero          bool
	}
	if err := json.Unmarshal([]byte(sh(t, "qemu-img", "map", "--output=json", image)), &ranges); err != nil {
		t.Fatal(err)
	}
	var want []int64 // where data starts, as QEMU sees it
	for _, r := range ranges {
		if !r.Zero {
			want = append(want, r.Start)
		}
	}
	mnt := mountImage(t, image)
	f, err := os.Open(filepath.Join(mnt, "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []int64
	for off := int64(0); ; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data after off
		}
		got = append(got, data)
		if off, err = unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE); err != nil {
			t.Fatal(err)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || fmt.Sprint(want) != "[104857600]" {
		t.Fatalf("data starts at %v through the mount, at %v by qemu-img map", got, want)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil || st.Blocks*512 != 1<<20 {
		t.Fatalf("st_blocks %d (%d bytes), want the megabyte written: %v", st.Blocks, st.Blocks*512, err)
	}
}
