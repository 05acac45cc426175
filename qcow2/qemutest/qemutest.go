// Package qemutest makes disk images with QEMU's own tools and reads them
// back with QEMU, the oracle our reader is compared with. It is for tests.
package qemutest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// InCI reports whether the tests run in CI, where a missing prerequisite is
// a failure rather than a reason to skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require skips the test (fails it in CI) unless every tool is on PATH.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Missing(t, tool+" is not installed (make test installs it as root)")
		}
	}
}

// Missing skips the test for a missing prerequisite, or fails it in CI.
func Missing(t testing.TB, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing in CI: %s", why)
	}
	t.Skip("skipped: " + why)
}

// Run runs a command and fails the test, with its output, if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	return RunIn(t, "", name, args...)
}

// RunIn is Run in directory dir. QEMU resolves a relative external data
// file name against its working directory, so the helpers below run QEMU
// in the image's directory.
func RunIn(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	out, err := runIn(dir, name, args...)
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return out
}

func runIn(dir, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Create makes an image with qemu-img create; opts are -o options.
func Create(t testing.TB, path, format, size string, opts ...string) {
	t.Helper()
	args := []string{"create", "-q", "-f", format}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	RunIn(t, filepath.Dir(path), "qemu-img", append(args, path, size)...)
}

// IO runs qemu-io commands (such as "write -P 0x11 0 64k") on a qcow2 image.
func IO(t testing.TB, path string, cmds ...string) {
	t.Helper()
	IOFormat(t, path, "qcow2", cmds...)
}

// IOFormat runs qemu-io commands on an image of the given format.
func IOFormat(t testing.TB, path, format string, cmds ...string) {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	RunIn(t, filepath.Dir(path), "qemu-io", append(args, path)...)
}

// Raw converts an image to a raw file with qemu-img convert and returns its
// path; extra arguments (such as "-l", "snapshot.name=s1") go before the
// source name.
func Raw(t testing.TB, image string, extra ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "qemu.raw")
	args := append([]string{"convert", "-O", "raw"}, extra...)
	dir := "" // image may be a json: description rather than a file
	if _, err := os.Stat(image); err == nil {
		dir = filepath.Dir(image)
	}
	RunIn(t, dir, "qemu-img", append(args, image, out)...)
	return out
}

// RawBytes is Raw, read into memory.
func RawBytes(t testing.TB, image string, extra ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(Raw(t, image, extra...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Pattern returns n bytes of a pattern that differs from offset to offset,
// so misplaced data never compares equal.
func Pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// WriteFile writes data at off in a raw file, growing it as needed.
func WriteFile(t testing.TB, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

// FirstDiff reports the first offset where a and b differ, or -1.
func FirstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i += 4096 {
		end := min(i+4096, n)
		if !bytes.Equal(a[i:end], b[i:end]) {
			for j := i; j < end; j++ {
				if a[j] != b[j] {
					return j
				}
			}
		}
	}
	if len(a) != len(b) {
		return n
	}
	return -1
}

// ThreeLevelChain builds raw base <- qcow2 middle (compressed clusters) <-
// qcow2 top with extended L2 (subcluster writes and zeros), the top larger
// than the rest.
func ThreeLevelChain(t testing.TB, dir string) (top, middle, base string) {
	t.Helper()
	base = filepath.Join(dir, "base.raw")
	WriteFile(t, base, 0, Pattern(1, 3<<20))
	middle = filepath.Join(dir, "middle.qcow2")
	Create(t, middle, "qcow2", "4M", "backing_file=base.raw", "backing_fmt=raw")
	IO(t, middle,
		"write -c -P 0x21 0 64k", "write -c -P 0x22 192k 128k",
		"write -P 0x23 1000 3000", "write -z 2M 128k")
	top = filepath.Join(dir, "top.qcow2")
	Create(t, top, "qcow2", "6M", "backing_file=middle.qcow2", "backing_fmt=qcow2", "extended_l2=on", "cluster_size=64k")
	IO(t, top,
		"write -P 0x31 2048 2048", "write -P 0x32 70000 5000",
		"write -z 8192 4096", "write -z 512k 64k", "write -P 0x33 3M 1M",
		"write -P 0x34 5M 1000")
	return top, middle, base
}

// Touch creates an empty file at path and returns path.
func Touch(t testing.TB, path string) string {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Open opens path for reading for the rest of the test and returns it
// with its size.
func Open(t testing.TB, path string) (*os.File, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return f, st.Size()
}

// EmulatedEnv names the environment variable that says the tests run under
// user-mode emulation (qemu-user): make emulated sets it to the
// emulator's name.
const EmulatedEnv = "QCOWMOUNT_EMULATED"

// SkipIfEmulated skips a test that serves FUSE under user-mode emulation:
// the emulated process writes FUSE's structures in its own byte order
// and layout, and the host kernel reads them in its own, so no mount can
// work there; what the test checks beyond FUSE is checked natively.
func SkipIfEmulated(t testing.TB) {
	t.Helper()
	if emu := os.Getenv(EmulatedEnv); emu != "" {
		t.Skipf("skipped under %s: FUSE speaks the host kernel's byte order and layout, not the emulated process's", emu)
	}
}

// KeyFile writes a passphrase, as its exact bytes, to a file of its own
// (mode 0600), and returns its path.
func KeyFile(t testing.TB, pass string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, []byte(pass), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// SHA256 is the hex SHA-256 of b, as sha256sum prints it.
func SHA256(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// PatternImage makes, in dir, a qcow2 image of clusterSize and compat
// (compressed with compression unless it is ""), size bytes, holding
// patterned data, holes, zero clusters and unaligned writes, as the
// qcow2 package's oracle tests make them; it returns the image's path.
func PatternImage(t testing.TB, dir string, clusterSize int64, compat, compression string, size int64) string {
	t.Helper()
	raw := filepath.Join(dir, "src.raw")
	WriteFile(t, raw, 0, Pattern(1, int(clusterSize+clusterSize/2)))
	WriteFile(t, raw, 5*clusterSize+100, Pattern(2, int(3*clusterSize)))
	WriteFile(t, raw, size-700, Pattern(3, 700))
	plain := filepath.Join(dir, "plain.qcow2")
	Run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2",
		"-o", fmt.Sprintf("cluster_size=%d,compat=%s", clusterSize, compat), raw, plain)
	IO(t, plain, fmt.Sprintf("write -z %d %d", 6*clusterSize, 2*clusterSize),
		fmt.Sprintf("write -P 0x5a %d 1000", 3*clusterSize+1))
	if compression == "" {
		return plain
	}
	out := filepath.Join(dir, "compressed.qcow2")
	Run(t, "qemu-img", "convert", "-q", "-c", "-O", "qcow2",
		"-o", fmt.Sprintf("cluster_size=%d,compat=%s,compression_type=%s", clusterSize, compat, compression), plain, out)
	return out
}

// GuestDisk builds a raw GPT disk with an ext4 and a FAT partition filled
// with files, and returns the disk and each file's sha256 by partition.
func GuestDisk(t testing.TB, dir string) (string, map[string]map[string]string) {
	t.Helper()
	Require(t, "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy")
	sums := map[string]map[string]string{"ext4": {}, "vfat": {}}
	tree := filepath.Join(dir, "tree")
	files := map[string][]byte{
		"hello.txt":           []byte("hello from the guest\n"),
		"big/random.bin":      Pattern(7, 3<<20+123),
		"big/another.bin":     Pattern(8, 1<<20),
		"deep/a/b/c/tiny.txt": []byte("x"),
	}
	for name, data := range files {
		p := filepath.Join(tree, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sums["ext4"][name] = SHA256(data)
	}
	ext4 := filepath.Join(dir, "p1.ext4")
	Run(t, "mkfs.ext4", "-q", "-F", "-d", tree, ext4, "12M")
	fat := filepath.Join(dir, "p2.fat")
	Run(t, "mkfs.vfat", "-C", fat, "4096")
	for i, size := range []int{100, 700000, 2 << 20} {
		name := fmt.Sprintf("FILE%d.BIN", i)
		data := Pattern(byte(20+i), size)
		local := filepath.Join(dir, name)
		os.WriteFile(local, data, 0o644)
		Run(t, "mcopy", "-i", fat, local, "::/"+name)
		sums["vfat"][name] = SHA256(data)
	}
	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(disk, 20<<20)
	sfdisk := exec.Command("sfdisk", "-q", disk)
	sfdisk.Stdin = strings.NewReader("label: gpt\nstart=2048, size=24576, type=L\nstart=26624, size=8192, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n")
	if out, err := sfdisk.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	Run(t, "dd", "if="+ext4, "of="+disk, "bs=512", "seek=2048", "conv=notrunc", "status=none")
	Run(t, "dd", "if="+fat, "of="+disk, "bs=512", "seek=26624", "conv=notrunc", "status=none")
	return disk, sums
}

// NeverWritten fails the test if the file's bytes or mtime change before
// the test ends: the image a writer works over is only ever read.
func NeverWritten(t testing.TB, path string) {
	t.Helper()
	state := func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%s %d", SHA256(b), st.ModTime().UnixNano())
	}
	before := state()
	t.Cleanup(func() {
		if after := state(); after != before {
			t.Errorf("%s was written: sha256 and mtime %s, were %s", path, after, before)
		}
	})
}
