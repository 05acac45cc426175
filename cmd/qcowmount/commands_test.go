//go:build unix

package main

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// requireRoot skips (fails in CI) unless running as root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		qemutest.Missing(t, "needs root for loop devices")
	}
}

// readKind is an image the commands that read a whole disk (export, hash)
// are tested on, with QEMU's raw output of it.
type readKind struct {
	name  string
	image string
	args  []string
	want  string
}

// readKinds builds one image of each kind the mount reads.
func readKinds(t *testing.T) []readKind {
	t.Helper()
	qemutest.Require(t, "qemu-img", "qemu-io")
	var kinds []readKind
	add := func(name, image string, args []string, want string) {
		kinds = append(kinds, readKind{name, image, args, want})
	}
	for _, m := range []struct {
		cs               int64
		compat, compress string
		size             int64
	}{{512, "0.10", "", 3<<20 + 512}, {4096, "1.1", "zstd", 5<<20 + 1536}, {65536, "1.1", "zlib", 9<<20 + 512}, {2 << 20, "1.1", "", 20<<20 + 1024}} {
		image := qemutest.PatternImage(t, t.TempDir(), m.cs, m.compat, m.compress, m.size)
		add(fmt.Sprintf("cs%d-%s-%s", m.cs, m.compat, m.compress), image, nil, qemutest.Raw(t, image))
	}
	top, _, _ := qemutest.ThreeLevelChain(t, t.TempDir())
	add("chain", top, nil, qemutest.Raw(t, top))

	dir := t.TempDir()
	data := filepath.Join(dir, "meta.qcow2")
	qemutest.Create(t, data, "qcow2", "3M", "data_file=data.bin")
	qemutest.IO(t, data, "write -P 0x51 0 100k", "write -z 40k 8k", "write -P 0x53 3000k 72k")
	add("data file", data, nil, qemutest.Raw(t, data))

	snap := filepath.Join(dir, "snap.qcow2")
	qemutest.Create(t, snap, "qcow2", "2M")
	qemutest.IO(t, snap, "write -P 0x71 0 300k")
	qemutest.Run(t, "qemu-img", "snapshot", "-c", "before", snap)
	qemutest.IO(t, snap, "write -P 0x72 100k 300k")
	add("snapshot", snap, []string{"--snapshot", "before"}, qemutest.Raw(t, snap, "-l", "snapshot.name=before"))

	sub := filepath.Join(dir, "sub.qcow2")
	qemutest.Create(t, sub, "qcow2", "4M", "extended_l2=on", "cluster_size=64k")
	qemutest.IO(t, sub, "write -P 0x61 0 5k", "write -P 0x62 70k 3k", "write -z 1M 64k", "write -c -P 0x63 2M 64k")
	add("extended L2", sub, nil, qemutest.Raw(t, sub))

	old := filepath.Join(dir, "old.qcow")
	qemutest.Create(t, old, "qcow", "2M")
	qemutest.IOFormat(t, old, "qcow", "write -c -P 0x81 0 4k", "write -P 0x82 100k 50k")
	add("qcow v1", old, nil, qemutest.Raw(t, old))

	luks := filepath.Join(dir, "luks.qcow2")
	qemutest.CreateEncrypted(t, luks, "qcow2", "4M", "export pass", "encrypt.format=luks", "encrypt.iter-time=10")
	qemutest.IOEncrypted(t, luks, "qcow2", []string{"export pass"}, "write -P 0x91 0 1M", "write -P 0x92 3M 4k")
	add("LUKS", luks, []string{"--key-file", qemutest.KeyFile(t, "export pass")}, qemutest.RawEncrypted(t, luks, "qcow2", "export pass"))

	sparse := filepath.Join(dir, "sparse.qcow2")
	qemutest.Create(t, sparse, "qcow2", "1G")
	qemutest.IO(t, sparse, "write -P 1 0 64k", "write -P 2 256M 1M", "write -z 512M 64k", "write -P 0 600M 4M", "write -P 4 1023M 1M")
	add("sparse", sparse, nil, qemutest.Raw(t, sparse))
	return kinds
}

// TestExportMatchesQemu exports each kind of image to a file and to
// standard output: the bytes are qemu-img convert's, and the file keeps
// the holes (and zero data) as holes.
func TestExportMatchesQemu(t *testing.T) {
	for _, k := range readKinds(t) {
		t.Run(k.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "out.raw")
			if msg, code := qcowmount(t, append(append([]string{"export"}, k.args...), k.image, out)...); code != 0 {
				t.Fatalf("export: exit %d: %s", code, msg)
			}
			cmpFiles(t, out, k.want)
			if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 1 {
				t.Errorf("left behind: %q", left)
			}
			st, err := os.Stat(out)
			if err != nil {
				t.Fatal(err)
			}
			if k.name == "sparse" {
				// 2 MiB of data in 1 GiB: the 4 MiB of zeros written as data
				// are holes too.
				if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > 3<<20 {
					t.Errorf("the export takes %d bytes on disk: holes were written", used)
				}
			}
			// What a new file gets (umask 022 here); decrypted bytes, only
			// their owner's.
			if want := map[bool]os.FileMode{false: 0o644, true: 0o600}[k.name == "LUKS"]; st.Mode().Perm() != want {
				t.Errorf("mode %v, want %v", st.Mode().Perm(), want)
			}
			piped := filepath.Join(dir, "piped.raw")
			f, err := os.Create(piped)
			if err != nil {
				t.Fatal(err)
			}
			var msg bytes.Buffer
			code := qcowmountTo(t, f, &msg, append(append([]string{"export"}, k.args...), k.image, "-")...)
			f.Close()
			if code != 0 || msg.String() != "" {
				t.Fatalf("export -: exit %d: %q (standard error is no terminal: nothing is due)", code, msg.String())
			}
			cmpFiles(t, piped, k.want)
			if msg, code := qcowmount(t, append(append([]string{"export", "--progress"}, k.args...), k.image, out)...); code != 0 || !strings.Contains(msg, "export disk.raw") {
				t.Errorf("export --progress: exit %d, no progress bar: %q", code, msg)
			}
		})
	}
}

// sums computes the checksums hash offers of a file, BLAKE3 by b3sum.
func sums(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hs := map[string]hash.Hash{"md5": md5.New(), "sha1": sha1.New(), "sha256": sha256.New(), "sha512": sha512.New()}
	var ws []io.Writer
	for _, h := range hs {
		ws = append(ws, h)
	}
	if _, err := io.Copy(io.MultiWriter(ws...), f); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{"blake3": strings.Fields(qemutest.Run(t, "b3sum", "--no-names", path))[0]}
	for name, h := range hs {
		out[name] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

type hashJSON struct {
	Algorithms []string
	Parts      []struct {
		Name      string
		Partition int
		Volume    string
		Size      int64
		Sums      map[string]string
	}
}

func hashImage(t *testing.T, args ...string) hashJSON {
	t.Helper()
	var out, msg bytes.Buffer
	if code := qcowmountTo(t, &out, &msg, append([]string{"hash", "--json"}, args...)...); code != 0 {
		t.Fatalf("hash %q: exit %d: %s", args, code, msg.String())
	}
	var h hashJSON
	if err := json.Unmarshal(out.Bytes(), &h); err != nil {
		t.Fatalf("hash %q: %v\n%s", args, err, out.String())
	}
	return h
}

// TestHashMatchesQemu hashes each kind of image with every checksum at
// once: each equals the checksum of qemu-img convert's output.
func TestHashMatchesQemu(t *testing.T) {
	qemutest.Require(t, "b3sum")
	for _, k := range readKinds(t) {
		t.Run(k.name, func(t *testing.T) {
			got := hashImage(t, append(append([]string{"--algo", "md5,sha1,sha256,sha512,blake3", "--no-partitions"}, k.args...), k.image)...)
			if len(got.Parts) != 1 || got.Parts[0].Name != "disk.raw" {
				t.Fatalf("parts %+v, want disk.raw alone", got.Parts)
			}
			want := sums(t, k.want)
			for algo, sum := range want {
				if got.Parts[0].Sums[algo] != sum {
					t.Errorf("%s %s, want %s", algo, got.Parts[0].Sums[algo], sum)
				}
			}
			out, code := qcowmount(t, append(append([]string{"hash"}, k.args...), k.image)...)
			if line := want["sha256"] + "  disk.raw\n"; code != 0 || !strings.HasPrefix(out, line) {
				t.Errorf("hash: exit %d, %q; want it to start %q", code, out, line)
			}
		})
	}
}

// TestHashOfAnEmptyDisk: holes are hashed without reading them; the
// checksum of a large empty disk is that of its zeros.
func TestHashOfAnEmptyDisk(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	image := filepath.Join(t.TempDir(), "empty.qcow2")
	const size = 4 << 30
	qemutest.Create(t, image, "qcow2", fmt.Sprint(size))
	h := sha256.New()
	zeros := make([]byte, 1<<20)
	for range size / len(zeros) {
		h.Write(zeros)
	}
	out, code := qcowmount(t, "hash", image)
	if want := hex.EncodeToString(h.Sum(nil)) + "  disk.raw\n"; code != 0 || out != want {
		t.Fatalf("exit %d, %q; want %q", code, out, want)
	}
}

// TestExportToABlockDevice writes the disk to a loop device, which gets
// every byte (zeros included); a device too small is refused.
func TestExportToABlockDevice(t *testing.T) {
	requireRoot(t)
	qemutest.Require(t, "qemu-img", "qemu-io", "losetup")
	dir := t.TempDir()
	image := filepath.Join(dir, "small.qcow2")
	qemutest.Create(t, image, "qcow2", "8M")
	qemutest.IO(t, image, "write -P 0x33 1M 1M", "write -P 0x34 7M 4k")
	want, err := os.ReadFile(qemutest.Raw(t, image))
	if err != nil {
		t.Fatal(err)
	}
	backing := filepath.Join(dir, "device.img")
	for name, size := range map[string]int64{"big enough": 9 << 20, "too small": 4 << 20} {
		t.Run(name, func(t *testing.T) {
			// Junk first: the export must overwrite the holes too.
			if err := os.WriteFile(backing, qemutest.Pattern(9, int(size)), 0o644); err != nil {
				t.Fatal(err)
			}
			dev := strings.TrimSpace(qemutest.Run(t, "losetup", "--find", "--show", backing))
			defer qemutest.Run(t, "losetup", "-d", dev)
			msg, code := qcowmount(t, "export", image, dev)
			if size < int64(len(want)) {
				if code != 1 || !strings.Contains(msg, "less than the 8388608 to export") {
					t.Fatalf("exit %d: %s", code, msg)
				}
				return
			}
			if code != 0 {
				t.Fatalf("exit %d: %s", code, msg)
			}
			got := make([]byte, len(want))
			f, err := os.Open(dev)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := io.ReadFull(f, got); err != nil {
				t.Fatal(err)
			}
			if at := qemutest.FirstDiff(got, want); at >= 0 {
				t.Errorf("device differs at %d", at)
			}
		})
	}
}

// TestExportKeepsWhatOUTIs: export writes an existing OUT in place, as
// qemu-img convert does (same file, mode and owner; a symbolic link
// followed, its target written), and makes a new file for decrypted
// bytes that only its owner can read, whatever the umask.
func TestExportKeepsWhatOUTIs(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	plain, _ := filepath.Abs("../../testdata/demo.qcow2")
	want, err := os.ReadFile(qemutest.Raw(t, plain))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("round four"), 0o600); err != nil {
		t.Fatal(err)
	}
	luks := filepath.Join(dir, "luks.qcow2")
	qemutest.ConvertEncrypted(t, qemutest.Raw(t, plain), luks, "qcow2", "round four", "encrypt.format=luks", "encrypt.iter-time=10")
	check := func(t *testing.T, path string) {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s does not hold the guest disk: %v", path, err)
		}
	}
	t.Run("an existing file of mode 0600", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out.raw")
		if err := os.WriteFile(out, bytes.Repeat([]byte("x"), 20<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		before, _ := os.Stat(out)
		if msg, code := qcowmount(t, "export", "--key-file", key, luks, out); code != 0 {
			t.Fatalf("exit %d: %s", code, msg)
		}
		check(t, out)
		after, _ := os.Stat(out)
		if !os.SameFile(before, after) || after.Mode().Perm() != 0o600 {
			t.Fatalf("OUT is mode %v, same file %v: want the same file, 0600", after.Mode(), os.SameFile(before, after))
		}
	})
	t.Run("a symbolic link to a file", func(t *testing.T) {
		d := t.TempDir()
		target, link := filepath.Join(d, "target.raw"), filepath.Join(d, "link.raw")
		if err := os.WriteFile(target, []byte("stale"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("target.raw", link); err != nil {
			t.Fatal(err)
		}
		if msg, code := qcowmount(t, "export", plain, link); code != 0 {
			t.Fatalf("exit %d: %s", code, msg)
		}
		if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("the link was replaced: %v %v", st, err)
		}
		check(t, target)
	})
	t.Run("a symbolic link to nothing yet", func(t *testing.T) {
		d := t.TempDir()
		link := filepath.Join(d, "link.raw")
		if err := os.Symlink("new.raw", link); err != nil {
			t.Fatal(err)
		}
		if msg, code := qcowmount(t, "export", plain, link); code != 0 {
			t.Fatalf("exit %d: %s", code, msg)
		}
		check(t, filepath.Join(d, "new.raw"))
	})
	for _, tc := range []struct {
		image string
		args  []string
		mode  os.FileMode
	}{{luks, []string{"--key-file", key}, 0o600}, {plain, nil, 0o644}} {
		t.Run("a new file from "+filepath.Base(tc.image), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "new.raw")
			// A umask of 022, as most users have, whatever the test's.
			defer syscall.Umask(syscall.Umask(0o022))
			if msg, code := qcowmount(t, append(append([]string{"export"}, tc.args...), tc.image, out)...); code != 0 {
				t.Fatalf("exit %d: %s", code, msg)
			}
			check(t, out)
			if st, _ := os.Stat(out); st.Mode().Perm() != tc.mode {
				t.Fatalf("new OUT has mode %v, want %v", st.Mode().Perm(), tc.mode)
			}
		})
	}
}

// qemuCheckText runs qemu-img check on an image, returning its standard
// output and exit code.
func qemuCheckText(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("qemu-img", append([]string{"check"}, args...)...)
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// TestCheckCommand runs check as a script would: exit codes, text and
// JSON are qemu-img check's on clean, leaking and corrupt images; what
// cannot be checked exits 1; a backing file that is not there is a
// warning, not a failure.
func TestCheckCommand(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	tests := []struct {
		name string
		poke func(f *qemutest.ImageFile)
		code int
	}{
		{"clean", func(*qemutest.ImageFile) {}, 0},
		{"leak", (*qemutest.ImageFile).Leak, 3},
		{"corrupt", func(f *qemutest.ImageFile) { f.Put16(f.Refcount(f.DataCluster(0)), 0) }, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			image := filepath.Join(t.TempDir(), "c.qcow2")
			qemutest.Create(t, image, "qcow2", "16M")
			qemutest.IO(t, image, "write -P 1 0 128k", "write -c -P 2 1M 64k")
			f := qemutest.ReadImageFile(t, image)
			tc.poke(f)
			f.Save()
			wantText, wantCode := qemuCheckText(t, image)
			var got, problems bytes.Buffer
			if code := qcowmountTo(t, &got, &problems, "check", image); code != tc.code || wantCode != tc.code {
				t.Errorf("exit %d, qemu-img check %d, want %d", code, wantCode, tc.code)
			}
			if text, _, _ := strings.Cut(got.String(), "\nFindings:"); text != wantText {
				t.Errorf("check says\n%s\nqemu-img check says\n%s", got.String(), wantText)
			}
			wantJSON, _ := qemuCheckText(t, "--output=json", image)
			var gotJSON bytes.Buffer
			qcowmountTo(t, &gotJSON, io.Discard, "check", "--output=json", image)
			var w, g map[string]any
			if err := json.Unmarshal([]byte(wantJSON), &w); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(gotJSON.Bytes(), &g); err != nil {
				t.Fatalf("%v: %s", err, gotJSON.String())
			}
			for k, v := range w {
				if g[k] != v {
					t.Errorf("%s: %v, qemu-img check says %v", k, g[k], v)
				}
			}
		})
	}
	t.Run("not an image", func(t *testing.T) {
		junk := filepath.Join(t.TempDir(), "junk.qcow2")
		if err := os.WriteFile(junk, []byte("QFI\xfb but not really"), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, code := qcowmount(t, "check", junk); code != 1 || !strings.Contains(out, "junk.qcow2") {
			t.Errorf("exit %d: %s", code, out)
		}
	})
	t.Run("missing data file", func(t *testing.T) {
		dir := t.TempDir()
		image := filepath.Join(dir, "meta.qcow2")
		qemutest.Create(t, image, "qcow2", "1M", "data_file=data.img")
		os.Remove(filepath.Join(dir, "data.img"))
		out, code := qcowmount(t, "check", image)
		if code != 0 || !strings.Contains(out, `warning: guest data lies in the external data file "data.img", which does not open: `) {
			t.Errorf("exit %d: %s", code, out)
		}
	})
	t.Run("missing backing file", func(t *testing.T) {
		dir := t.TempDir()
		base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
		qemutest.Create(t, base, "qcow2", "1M")
		qemutest.Create(t, top, "qcow2", "1M", "backing_file=base.qcow2", "backing_fmt=qcow2")
		os.Remove(base)
		out, code := qcowmount(t, "check", top)
		if code != 0 || !strings.Contains(out, `warning: backing file "base.qcow2" (format qcow2), not opened: `) {
			t.Errorf("exit %d: %s", code, out)
		}
	})
}

// TestPartitionsAndVolumes exports and hashes partitions and LVM volumes:
// their bytes are the guest's.
func TestPartitionsAndVolumes(t *testing.T) {
	qemutest.Require(t, "qemu-img", "sha256sum")
	dir := t.TempDir()
	raw, _ := qemutest.GuestDisk(t, dir)
	image := filepath.Join(dir, "guest.qcow2")
	qemutest.Run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, image)
	disk, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	parts := map[int][]byte{1: disk[2048*512 : (2048+24576)*512], 2: disk[26624*512 : (26624+8192)*512]}
	for n, want := range parts {
		exportMatches(t, want, "--partition", fmt.Sprint(n), image)
	}
	lines, code := qcowmount(t, "hash", image)
	if code != 0 || strings.Count(lines, "\n") != 3 || !strings.Contains(lines, "  p1.raw\n") || !strings.Contains(lines, "  p2.raw\n") {
		t.Fatalf("hash: exit %d:\n%s", code, lines)
	}
	for n, want := range parts {
		if line := fmt.Sprintf("%s  p%d.raw\n", qemutest.SHA256(want), n); !strings.Contains(lines, line) {
			t.Errorf("hash: no line %q in\n%s", line, lines)
		}
	}
	if one, code := qcowmount(t, "hash", "--partition", "2", image); code != 0 || one != fmt.Sprintf("%s  p2.raw\n", qemutest.SHA256(parts[2])) {
		t.Errorf("hash --partition 2: exit %d, %q", code, one)
	}
	t.Run("LVM volumes", func(t *testing.T) { exportAndHashVolumes(t) })
}

func exportAndHashVolumes(t *testing.T) {
	lvmRaw := filepath.Join(t.TempDir(), "lvm.raw")
	g := qemutest.LVMDisk(t, lvmRaw)
	volumes := g.Volumes
	lvm := filepath.Join(t.TempDir(), "lvm.qcow2")
	qemutest.Run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", lvmRaw, lvm)
	got := hashImage(t, lvm)
	found := 0
	for _, p := range got.Parts {
		name, ok := strings.CutPrefix(p.Volume, g.VG+"/")
		if !ok {
			continue
		}
		found++
		if want := qemutest.SHA256(volumes[name]); p.Sums["sha256"] != want {
			t.Errorf("volume %s: sha256 %s, want %s", p.Volume, p.Sums["sha256"], want)
		}
	}
	if found != len(volumes) {
		t.Errorf("hash found %d volumes, want %d: %+v", found, len(volumes), got.Parts)
	}
	for name, want := range volumes {
		exportMatches(t, want, "--volume", g.VG+"/"+name, lvm)
	}
}

// exportMatches exports with args (flags, then IMAGE) to a new file and
// fails unless it holds want.
func exportMatches(t *testing.T, want []byte, args ...string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	if msg, code := qcowmount(t, append(append([]string{"export"}, args...), out)...); code != 0 {
		t.Fatalf("export %v: exit %d: %s", args, code, msg)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if at := qemutest.FirstDiff(got, want); at >= 0 || len(got) != len(want) {
		t.Errorf("export %v: %d bytes, first difference at %d", args, len(got), at)
	}
}

// cmpFiles fails unless the two files have the same bytes.
func cmpFiles(t *testing.T, got, want string) {
	t.Helper()
	if out, err := exec.Command("cmp", got, want).CombinedOutput(); err != nil {
		t.Fatalf("cmp %s %s: %v: %s", got, want, err, out)
	}
}
