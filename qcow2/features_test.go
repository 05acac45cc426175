//go:build unix

package qcow2_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// rewriteHeader patches an image file in place: fn gets the whole file.
func rewriteHeader(t *testing.T, path string, fn func(b []byte)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fn(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// dropBackingFormat turns the backing-format extension into an unknown
// one, as in images written before QEMU recorded the format.
func dropBackingFormat(t *testing.T, path string) {
	rewriteHeader(t, path, func(b []byte) {
		for off := int(binary.BigEndian.Uint32(b[100:])); off+8 <= len(b); {
			typ, n := binary.BigEndian.Uint32(b[off:]), int(binary.BigEndian.Uint32(b[off+4:]))
			if typ == 0 {
				return
			}
			if typ == 0xe2792aca {
				binary.BigEndian.PutUint32(b[off:], 0x0badf00d)
				return
			}
			off += 8 + (n+7)&^7
		}
	})
}

func mustInfo(t *testing.T, l qcow2.Layer) qcow2.Info {
	t.Helper()
	in, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func openAndCompare(t *testing.T, path string, opts qcow2.Options, qemuArgs ...string) *qcow2.Image {
	t.Helper()
	img, err := qcow2.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	compareWithRaw(t, img, qemutest.Raw(t, path, qemuArgs...))
	return img
}

func TestBackingChains(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	t.Run("three levels with subclusters", func(t *testing.T) {
		top, _, _ := qemutest.ThreeLevelChain(t, t.TempDir())
		img := openAndCompare(t, top, qcow2.Options{})
		var chain []qcow2.Info
		for _, l := range img.Chain() {
			chain = append(chain, mustInfo(t, l))
		}
		if len(chain) != 3 || chain[0].Format != "qcow2" || chain[1].Format != "qcow2" || chain[2].Format != "raw" {
			t.Fatalf("chain %+v", chain)
		}
		if chain[2].VirtualSize != 3<<20 || !*chain[0].FormatSpecific.Data.ExtendedL2 {
			t.Fatalf("chain sizes/features: %+v", chain)
		}
	})
	t.Run("tiny shared cache", func(t *testing.T) {
		top, _, _ := qemutest.ThreeLevelChain(t, t.TempDir())
		openAndCompare(t, top, qcow2.Options{L2CacheSize: 1, ClusterCacheSize: 1})
	})
	t.Run("no backing format recorded", func(t *testing.T) {
		top, middle, _ := qemutest.ThreeLevelChain(t, t.TempDir())
		dropBackingFormat(t, top)
		dropBackingFormat(t, middle)
		openAndCompare(t, top, qcow2.Options{})
	})
	t.Run("relative names resolve against the image", func(t *testing.T) {
		dir := t.TempDir()
		os.Mkdir(filepath.Join(dir, "sub"), 0o755)
		base := filepath.Join(dir, "sub", "base.qcow2")
		qemutest.Create(t, base, "qcow2", "1M")
		qemutest.IO(t, base, "write -P 0x41 0 100k")
		top := filepath.Join(dir, "top.qcow2")
		qemutest.Create(t, top, "qcow2", "1M", "backing_file=sub/base.qcow2", "backing_fmt=qcow2")
		qemutest.IO(t, top, "write -P 0x42 50k 10k")
		// The test runs in the package directory, not dir.
		img := openAndCompare(t, top, qcow2.Options{})
		if got := mustInfo(t, img).FullBackingFilename; got != base {
			t.Fatalf("full backing filename %q, want %q", got, base)
		}
	})
	t.Run("no-backing reads the top alone", func(t *testing.T) {
		top, _, _ := qemutest.ThreeLevelChain(t, t.TempDir())
		alone := fmt.Sprintf(`json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":%q}}`, top)
		img, err := qcow2.Open(top, qcow2.Options{NoBacking: true})
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		compareWithRaw(t, img, qemutest.Raw(t, alone))
	})
	t.Run("backing dir allows what lies inside", func(t *testing.T) {
		top, _, _ := qemutest.ThreeLevelChain(t, t.TempDir())
		openAndCompare(t, top, qcow2.Options{BackingDir: filepath.Dir(top)})
	})
}

// refusal is an image that Open must refuse, and what its error says.
type refusal struct {
	name  string
	setup func(t *testing.T, dir string) (string, qcow2.Options)
	msg   []string
}

// checkRefusals fails unless Open refuses each image with an error that
// says every msg; check, where set, looks at the error too.
func checkRefusals(t *testing.T, tests []refusal, check func(t *testing.T, err error)) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path, opts := tc.setup(t, t.TempDir())
			img, err := qcow2.Open(path, opts)
			if err == nil {
				img.Close()
				t.Fatal("opened")
			}
			if check != nil {
				check(t, err)
			}
			for _, m := range tc.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not say %q", err, m)
				}
			}
		})
	}
}

func TestBackingChainRefusals(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	tests := []refusal{
		{"missing backing file", func(t *testing.T, dir string) (string, qcow2.Options) {
			top, _, _ := qemutest.ThreeLevelChain(t, dir)
			os.Remove(filepath.Join(dir, "base.raw"))
			return top, qcow2.Options{}
		}, []string{"middle.qcow2", `backing file "base.raw"`, "no such file"}},
		{"loop", func(t *testing.T, dir string) (string, qcow2.Options) {
			a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
			qemutest.Create(t, a, "qcow2", "1M")
			qemutest.Create(t, b, "qcow2", "1M", "backing_file=a.qcow2", "backing_fmt=qcow2")
			qemutest.Run(t, "qemu-img", "rebase", "-u", "-F", "qcow2", "-b", "b.qcow2", a)
			return b, qcow2.Options{}
		}, []string{"loops"}},
		{"self", func(t *testing.T, dir string) (string, qcow2.Options) {
			a := filepath.Join(dir, "a.qcow2")
			qemutest.Create(t, a, "qcow2", "1M")
			qemutest.Run(t, "qemu-img", "rebase", "-u", "-F", "qcow2", "-b", "a.qcow2", a)
			return a, qcow2.Options{}
		}, []string{"loops"}},
		{"json name", func(t *testing.T, dir string) (string, qcow2.Options) {
			top, _, _ := qemutest.ThreeLevelChain(t, dir)
			qemutest.SetBackingName(t, top, `json:{"driver":"file","filename":"/etc/passwd"}`)
			return top, qcow2.Options{}
		}, []string{"not a plain path", `protocol "json"`}},
		{"nbd name", func(t *testing.T, dir string) (string, qcow2.Options) {
			top, _, _ := qemutest.ThreeLevelChain(t, dir)
			qemutest.SetBackingName(t, top, "nbd://127.0.0.1:10809/disk")
			return top, qcow2.Options{}
		}, []string{"not a plain path"}},
		{"fifo", func(t *testing.T, dir string) (string, qcow2.Options) {
			top, _, _ := qemutest.ThreeLevelChain(t, dir)
			if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
				t.Fatal(err)
			}
			qemutest.SetBackingName(t, top, "fifo")
			return top, qcow2.Options{AllowDevices: true}
		}, []string{"not a regular file"}},
		{"character device", func(t *testing.T, dir string) (string, qcow2.Options) {
			top, _, _ := qemutest.ThreeLevelChain(t, dir)
			qemutest.SetBackingName(t, top, "/dev/null")
			return top, qcow2.Options{AllowAnyPath: true}
		}, []string{"/dev/null is not a regular file"}},
		{"outside the backing dir", func(t *testing.T, dir string) (string, qcow2.Options) {
			top, _, _ := qemutest.ThreeLevelChain(t, dir)
			qemutest.SetBackingName(t, top, "../middle.qcow2")
			inner := filepath.Join(dir, "inner")
			os.Mkdir(inner, 0o755)
			os.Rename(top, filepath.Join(inner, "top.qcow2"))
			return filepath.Join(inner, "top.qcow2"), qcow2.Options{BackingDir: inner}
		}, []string{"lies outside", "refused by path policy"}},
		{"too deep", func(t *testing.T, dir string) (string, qcow2.Options) {
			prev := filepath.Join(dir, "l0.qcow2")
			qemutest.Create(t, prev, "qcow2", "1M")
			for i := 1; i <= 64; i++ {
				next := filepath.Join(dir, fmt.Sprintf("l%d.qcow2", i))
				qemutest.Create(t, next, "qcow2", "1M", "backing_file="+filepath.Base(prev), "backing_fmt=qcow2")
				prev = next
			}
			return prev, qcow2.Options{}
		}, []string{"deeper than 64"}},
		{"unsupported backing format", func(t *testing.T, dir string) (string, qcow2.Options) {
			base := filepath.Join(dir, "base.vmdk")
			qemutest.Create(t, base, "vmdk", "1M")
			top := filepath.Join(dir, "top.qcow2")
			qemutest.Create(t, top, "qcow2", "1M", "backing_file=base.vmdk", "backing_fmt=vmdk")
			return top, qcow2.Options{}
		}, []string{`backing file format "vmdk"`}},
	}
	checkRefusals(t, tests, nil)
}

func TestBlockDeviceBacking(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io", "losetup")
	if os.Geteuid() != 0 {
		qemutest.Missing(t, "needs root for a loop device")
	}
	top, _, base := qemutest.ThreeLevelChain(t, t.TempDir())
	out, err := exec.Command("losetup", "-r", "--show", "-f", base).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	middle := filepath.Join(filepath.Dir(top), "middle.qcow2")
	qemutest.Run(t, "qemu-img", "rebase", "-u", "-F", "raw", "-b", loop, middle)
	if img, err := qcow2.Open(top, qcow2.Options{AllowAnyPath: true}); !errors.Is(err, qcow2.ErrDevice) {
		if err == nil {
			img.Close()
		}
		t.Fatalf("without AllowDevices: %v", err)
	}
	openAndCompare(t, top, qcow2.Options{AllowDevices: true, AllowAnyPath: true})
}

func TestExternalDataFile(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	for _, raw := range []string{"on", "off"} {
		t.Run("data_file_raw="+raw, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "meta.qcow2")
			qemutest.Create(t, img, "qcow2", "3M", "data_file=data.bin", "data_file_raw="+raw)
			qemutest.IO(t, img, "write -P 0x51 0 100k", "write -P 0x52 1M 64k", "write -z 1040k 8k", "write -P 0x53 3000k 72k")
			opened := openAndCompare(t, img, qcow2.Options{})
			d := mustInfo(t, opened).FormatSpecific.Data
			if d.DataFile != "data.bin" || d.DataFileRaw != (raw == "on") {
				t.Fatalf("info: data file %q raw %v", d.DataFile, d.DataFileRaw)
			}
		})
	}
	// QEMU reads through the L2 table even when the data file is raw: a
	// cluster marked zero or unallocated reads as such, whatever the data
	// file holds there.
	t.Run("data_file_raw with L2 entries that disagree", func(t *testing.T) {
		dir := t.TempDir()
		img := filepath.Join(dir, "meta.qcow2")
		qemutest.Create(t, img, "qcow2", "1M", "data_file=data.bin", "data_file_raw=on")
		qemutest.IO(t, img, "write -P 0x51 0 256k")
		l2 := func(b []byte) uint64 {
			return binary.BigEndian.Uint64(b[binary.BigEndian.Uint64(b[40:]):]) & 0x00fffffffffffe00
		}
		rewriteHeader(t, img, func(b []byte) {
			at := l2(b)
			binary.BigEndian.PutUint64(b[at:], binary.BigEndian.Uint64(b[at:])|1) // cluster 0: zero flag
			binary.BigEndian.PutUint64(b[at+8:], 0)                               // cluster 1: unallocated
		})
		openAndCompare(t, img, qcow2.Options{})
		// A cluster whose host offset is not its guest offset is corrupt
		// for QEMU too.
		rewriteHeader(t, img, func(b []byte) { binary.BigEndian.PutUint64(b[l2(b)+3*8:], 1<<63) })
		opened, err := qcow2.Open(img, qcow2.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer opened.Close()
		if _, err := opened.ReadAt(make([]byte, 4096), 3<<16); err == nil || !strings.Contains(err.Error(), "differs from the guest offset") {
			t.Fatalf("a raw data file cluster at the wrong host offset: %v", err)
		}
	})
	t.Run("missing data file", func(t *testing.T) {
		dir := t.TempDir()
		img := filepath.Join(dir, "meta.qcow2")
		qemutest.Create(t, img, "qcow2", "1M", "data_file=data.bin")
		os.Remove(filepath.Join(dir, "data.bin"))
		_, err := qcow2.Open(img, qcow2.Options{})
		if err == nil || !strings.Contains(err.Error(), "external data file") || !strings.Contains(err.Error(), "data.bin") {
			t.Fatalf("error %v", err)
		}
	})
}

func TestExtendedL2(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	for _, cs := range []string{"16k", "64k", "2M"} {
		t.Run(cs, func(t *testing.T) {
			img := filepath.Join(dir, cs+".qcow2")
			qemutest.Create(t, img, "qcow2", "8M", "extended_l2=on", "cluster_size="+cs)
			qemutest.IO(t, img, "write -P 0x61 0 1000", "write -P 0x62 5000 70000", "write -z 100k 30k",
				"write -P 0x63 4M 2M", "write -z 4100k 1k")
			openAndCompare(t, img, qcow2.Options{})
			comp := filepath.Join(dir, cs+"-compressed.qcow2")
			qemutest.Run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "extended_l2=on,cluster_size="+cs, img, comp)
			openAndCompare(t, comp, qcow2.Options{})
		})
	}
}

// TestSnapshotNamesAsQEMU: --snapshot finds what QEMU finds for
// `qemu-img convert -l KEY`: the first snapshot whose whole ID is KEY,
// else the first whose whole name is KEY, names ending at their first
// NUL and compared whole, however long.
func TestSnapshotNamesAsQEMU(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	img := filepath.Join(t.TempDir(), "names.qcow2")
	qemutest.Create(t, img, "qcow2", "1M")
	long := strings.Repeat("n", 259)
	names := []string{"base\x00junk", "base", long, "2", "dup", "dup"}
	for i := range names {
		qemutest.IO(t, img, fmt.Sprintf("write -P %d 0 64k", 0x10+i))
		qemutest.Run(t, "qemu-img", "snapshot", "-c", fmt.Sprint("s", i), img)
	}
	qemutest.SetSnapshotNames(t, img, names)
	for _, key := range []string{"base", "2", long, long[:255], "dup", "1", "6", "junk", "7"} {
		name := key
		if len(name) > 20 {
			name = fmt.Sprintf("%d bytes", len(key))
		}
		t.Run(name, func(t *testing.T) {
			want, qemuErr := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-l", key, img, filepath.Join(t.TempDir(), "out.raw")).CombinedOutput()
			opened, err := qcow2.Open(img, qcow2.Options{Snapshot: key})
			if (err != nil) != (qemuErr != nil) {
				t.Fatalf("open: %v; qemu-img: %v %s", err, qemuErr, want)
			}
			if err != nil {
				return
			}
			defer opened.Close()
			compareWithRaw(t, opened, qemutest.Raw(t, img, "-l", key))
		})
	}
}

func TestSnapshots(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "snap.qcow2")
	qemutest.Create(t, img, "qcow2", "2M")
	qemutest.IO(t, img, "write -P 0x71 0 300k")
	qemutest.Run(t, "qemu-img", "snapshot", "-c", "first", img)
	qemutest.IO(t, img, "write -P 0x72 100k 300k", "write -z 0 64k")
	qemutest.Run(t, "qemu-img", "resize", "-q", img, "3M")
	qemutest.IO(t, img, "write -P 0x73 2500k 100k")
	qemutest.Run(t, "qemu-img", "snapshot", "-c", "second", img)
	qemutest.IO(t, img, "write -P 0x74 0 1M")

	// QEMU's view of a snapshot's disk, size included, is what a copy of
	// the image reads after `qemu-img snapshot -a`.
	applied := func(t *testing.T, name string) string {
		cp := filepath.Join(t.TempDir(), "copy.qcow2")
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(cp, b, 0o644)
		qemutest.Run(t, "qemu-img", "snapshot", "-a", name, cp)
		return qemutest.Raw(t, cp)
	}
	tests := []struct {
		key, name string
		wantSize  int64
	}{
		{"first", "first", 2 << 20},
		{"1", "first", 2 << 20},
		{"second", "second", 3 << 20},
		{"2", "second", 3 << 20},
	}
	for _, tc := range tests {
		t.Run("snapshot "+tc.key, func(t *testing.T) {
			opened, err := qcow2.Open(img, qcow2.Options{Snapshot: tc.key})
			if err != nil {
				t.Fatal(err)
			}
			defer opened.Close()
			if opened.Size() != tc.wantSize {
				t.Fatalf("size %d, want %d", opened.Size(), tc.wantSize)
			}
			compareWithRaw(t, opened, applied(t, tc.name))
			// qemu-img convert -l reads the same L1 table, at the current
			// image's size: the snapshot's bytes are its prefix.
			viaL := qemutest.RawBytes(t, img, "-l", "snapshot.name="+tc.name)
			got := make([]byte, opened.Size())
			if _, err := opened.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if at := qemutest.FirstDiff(got, viaL[:len(got)]); at >= 0 {
				t.Fatalf("byte %#x differs from qemu-img convert -l", at)
			}
		})
	}
	t.Run("unknown snapshot", func(t *testing.T) {
		_, err := qcow2.Open(img, qcow2.Options{Snapshot: "third"})
		if err == nil || !strings.Contains(err.Error(), `no snapshot "third"; known snapshots: "1" ("first"), "2" ("second")`) {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("info lists them", func(t *testing.T) {
		opened, err := qcow2.Open(img, qcow2.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer opened.Close()
		sn := mustInfo(t, opened).Snapshots
		if len(sn) != 2 || sn[0].Name != "first" || sn[1].ID != "2" || sn[0].DiskSize != 2<<20 || sn[1].DiskSize != 3<<20 {
			t.Fatalf("snapshots %+v", sn)
		}
	})
}

func TestDirtyAndCorruptImagesRead(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	for _, bit := range []struct {
		name    string
		mask    byte
		warning bool
	}{{"dirty", 1, false}, {"corrupt", 2, true}} {
		t.Run(bit.name, func(t *testing.T) {
			path := buildImage(t, t.TempDir(), layout{4096, "1.1", ""})
			want := qemutest.Raw(t, path)
			rewriteHeader(t, path, func(b []byte) { b[79] |= bit.mask })
			img, err := qcow2.Open(path, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			compareWithRaw(t, img, want)
			if got := len(img.Warnings()) > 0; got != bit.warning {
				t.Fatalf("warnings %q", img.Warnings())
			}
		})
	}
}

func TestQcowVersion1(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	qemutest.WriteFile(t, base, 0, qemutest.Pattern(9, 2<<20))
	plain := filepath.Join(dir, "plain.qcow")
	qemutest.Create(t, plain, "qcow", "5M")
	qemutest.IOFormat(t, plain, "qcow", "write -P 0x81 0 10k", "write -P 0x82 1M 100k", "write -P 0x83 4M 1000")
	compressed := filepath.Join(dir, "compressed.qcow")
	qemutest.Create(t, compressed, "qcow", "5M")
	qemutest.IOFormat(t, compressed, "qcow", "write -c -P 0x86 0 4k", "write -c -P 0x87 64k 4k", "write -P 0x88 100k 4k")
	overlay := filepath.Join(dir, "overlay.qcow")
	qemutest.Create(t, overlay, "qcow", "4M", "backing_file=base.raw", "backing_fmt=raw")
	qemutest.IOFormat(t, overlay, "qcow", "write -P 0x84 500k 20k")
	over2 := filepath.Join(dir, "over-qcow1.qcow2")
	qemutest.Create(t, over2, "qcow2", "5M", "backing_file=compressed.qcow", "backing_fmt=qcow")
	qemutest.IO(t, over2, "write -P 0x85 2M 4k")
	for _, path := range []string{plain, compressed, overlay, over2} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			img := openAndCompare(t, path, qcow2.Options{})
			if filepath.Ext(path) == ".qcow" && mustInfo(t, img).Format != "qcow" {
				t.Fatalf("format %q", mustInfo(t, img).Format)
			}
		})
	}
	t.Run("encrypted needs a passphrase", func(t *testing.T) {
		enc := filepath.Join(dir, "enc.qcow")
		qemutest.Create(t, enc, "qcow", "1M")
		rewriteHeader(t, enc, func(b []byte) { binary.BigEndian.PutUint32(b[36:], 1) })
		_, err := qcow2.Open(enc, qcow2.Options{})
		var pe *qcow2.PassphraseError
		if !errors.As(err, &pe) || !pe.Missing || !strings.Contains(err.Error(), "encrypted (AES)") {
			t.Fatalf("error %v", err)
		}
	})
}
