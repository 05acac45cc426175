package overlay

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// write is one write of a test: data at off.
type write struct {
	off  int64
	data []byte
}

// baseSize is the test images' disk: several L2 tables of small clusters.
const baseSize = 3 << 20

// makeBase is a qcow2 image with data, zeros and holes, opened; the test
// checks at its end that nothing wrote it.
func makeBase(t *testing.T, dir string) (*qcow2.Image, []byte) {
	return makeBaseOf(t, dir, baseSize)
}

func makeBaseOf(t *testing.T, dir string, size int64) (*qcow2.Image, []byte) {
	t.Helper()
	qemutest.Require(t, "qemu-img", "qemu-io")
	path := filepath.Join(dir, "base.qcow2")
	qemutest.Create(t, path, "qcow2", fmt.Sprint(size))
	qemutest.IO(t, path, "write -P 0x11 0 100k", "write -P 0x22 1M 300k", "write -c -P 0x33 2M 64k", "write -z 2200k 64k")
	raw := qemutest.RawBytes(t, path)
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	qemutest.NeverWritten(t, path)
	t.Cleanup(func() { img.Close() })
	return img, raw
}

// randomWrites are n writes of 1 byte to 3 clusters, unaligned, across
// cluster and table boundaries, some of zeros, some over earlier ones.
func randomWrites(r *rand.Rand, n int, cluster, size int64) []write {
	var ws []write
	for i := range n {
		var w write
		switch r.IntN(6) {
		case 0: // a whole cluster of zeros
			w.off = r.Int64N(size/cluster) * cluster
			w.data = make([]byte, cluster)
		case 1: // over an earlier write
			if i > 0 {
				prev := ws[r.IntN(len(ws))]
				w.off = prev.off + r.Int64N(int64(len(prev.data)))
				w.data = qemutest.Pattern(byte(i), 1+r.IntN(int(cluster)))
				break
			}
			fallthrough
		default:
			w.off = r.Int64N(size)
			length := 1 + r.Int64N(3*cluster)
			if r.IntN(4) == 0 {
				length = 1 + r.Int64N(16)
			}
			w.data = qemutest.Pattern(byte(i), int(length))
			if r.IntN(5) == 0 {
				clear(w.data)
			}
		}
		if over := w.off + int64(len(w.data)) - size; over > 0 {
			w.data = w.data[:int64(len(w.data))-over]
		}
		if len(w.data) > 0 {
			ws = append(ws, w)
		}
	}
	return ws
}

func apply(disk []byte, ws []write) []byte {
	d := bytes.Clone(disk)
	for _, w := range ws {
		copy(d[w.off:], w.data)
	}
	return d
}

// qemuOverlay makes the same overlay with QEMU: qemu-img create -b, then
// the writes through qemu-io.
func qemuOverlay(t *testing.T, dir string, base *qcow2.Image, cluster int64, ws []write) string {
	t.Helper()
	path := filepath.Join(dir, "qemu.qcow2")
	qemutest.Create(t, path, "qcow2", fmt.Sprint(base.Size()), "backing_file="+base.Path(), "backing_fmt=qcow2", fmt.Sprint("cluster_size=", cluster))
	var cmds []string
	for i, w := range ws {
		src := filepath.Join(dir, fmt.Sprint("w", i))
		if err := os.WriteFile(src, w.data, 0o644); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, fmt.Sprintf("write -q -s %s %d %d", src, w.off, len(w.data)))
	}
	for len(cmds) > 0 {
		n := min(len(cmds), 200)
		qemutest.IO(t, path, cmds[:n]...)
		cmds = cmds[n:]
	}
	return path
}

// qemuCheck runs qemu-img check and fails the test unless it finds the
// image clean (leaks allowed where leaksOK).
func qemuCheck(t *testing.T, path string, leaksOK bool) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", path).CombinedOutput()
	if err != nil {
		if x, ok := err.(*exec.ExitError); ok && x.ExitCode() == 3 && leaksOK {
			return
		}
		t.Fatalf("qemu-img check %s: %v\n%s", path, err, out)
	}
}

// sameAsQEMU checks the overlay at ours against the bytes want, QEMU's
// overlay and qemu-img check, and reads it back with our reader.
func sameAsQEMU(t *testing.T, ours, theirs string, want []byte) {
	t.Helper()
	qemuCheck(t, ours, false)
	if out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", ours, theirs).CombinedOutput(); err != nil {
		t.Errorf("qemu-img compare: %v\n%s", err, out)
	}
	if got := qemutest.RawBytes(t, ours); !bytes.Equal(got, want) {
		t.Errorf("qemu-img convert of the overlay differs from the writes at %d", qemutest.FirstDiff(got, want))
	}
	img, err := qcow2.Open(ours, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	got := make([]byte, img.Size())
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("our reader of the overlay differs from the writes at %d", qemutest.FirstDiff(got, want))
	}
}

func TestWritesAsQEMU(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bits   uint32
		writes int
	}{
		{"512-byte clusters (many L2 tables)", 9, 300},
		{"4 KiB clusters", 12, 200},
		{"64 KiB clusters (QEMU's default)", 16, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			base, raw := makeBase(t, dir)
			cluster := int64(1) << tc.bits
			ws := randomWrites(rand.New(rand.NewPCG(uint64(tc.bits), 1)), tc.writes, cluster, base.Size())
			path := filepath.Join(dir, "ours.qcow2")
			o, err := Open(path, base, Backing{base.Path(), "qcow2"}, Options{ClusterBits: tc.bits, TableCacheSize: 8 * cluster})
			if err != nil {
				t.Fatal(err)
			}
			for i, w := range ws {
				if _, err := o.WriteAt(w.data, w.off); err != nil {
					t.Fatalf("write %d (%d bytes at %d): %v", i, len(w.data), w.off, err)
				}
				if i%37 == 0 {
					if err := o.Sync(); err != nil {
						t.Fatal(err)
					}
				}
			}
			want := apply(raw, ws)
			got := make([]byte, o.Size())
			if _, err := o.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("the overlay reads back otherwise than written at %d", qemutest.FirstDiff(got, want))
			}
			if err := o.Close(); err != nil {
				t.Fatal(err)
			}
			sameAsQEMU(t, path, qemuOverlay(t, dir, base, cluster, ws), want)
		})
	}
}

// TestContinuesQEMUsOverlay writes into an overlay QEMU made and wrote,
// and into ours again after closing it.
func TestContinuesQEMUsOverlay(t *testing.T) {
	for _, compat := range []string{"1.1", "0.10"} {
		t.Run("compat="+compat, func(t *testing.T) {
			dir := t.TempDir()
			base, raw := makeBase(t, dir)
			r := rand.New(rand.NewPCG(7, 7))
			first := randomWrites(r, 40, 4096, base.Size())
			path := qemuOverlay(t, dir, base, 4096, nil)
			qemutest.Run(t, "qemu-img", "amend", "-f", "qcow2", "-o", "compat="+compat, path)
			var cmds []string
			for i, w := range first {
				src := filepath.Join(dir, fmt.Sprint("first", i))
				if err := os.WriteFile(src, w.data, 0o644); err != nil {
					t.Fatal(err)
				}
				cmds = append(cmds, fmt.Sprintf("write -q -s %s %d %d", src, w.off, len(w.data)))
			}
			qemutest.IO(t, path, cmds...)
			second := randomWrites(r, 60, 4096, base.Size())
			for round := range 2 { // QEMU's file, then ours reopened
				o, err := Open(path, base, Backing{base.Path(), "qcow2"}, Options{})
				if err != nil {
					t.Fatal(err)
				}
				half := second[round*30 : round*30+30]
				for _, w := range half {
					if _, err := o.WriteAt(w.data, w.off); err != nil {
						t.Fatal(err)
					}
				}
				if err := o.Close(); err != nil {
					t.Fatal(err)
				}
			}
			all := append(first, second...)
			want := apply(raw, all)
			sameAsQEMU(t, path, qemuOverlay(t, t.TempDir(), base, 65536, all), want)
		})
	}
}

// TestConcurrentWriters writes from several goroutines at once, to
// clusters of their own and to shared ones, and reads while they write.
func TestConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	base, raw := makeBase(t, dir)
	path := filepath.Join(dir, "ours.qcow2")
	o, err := Open(path, base, Backing{base.Path(), "qcow2"}, Options{ClusterBits: 12, TableCacheSize: 4 << 12})
	if err != nil {
		t.Fatal(err)
	}
	const writers = 4
	var wg sync.WaitGroup
	plans := make([][]write, writers)
	for g := range writers {
		r := rand.New(rand.NewPCG(uint64(g), 3))
		// Each writer owns every fourth 8 KiB stripe: no two overlap, but
		// they share clusters' tables and the allocator.
		for i := range 150 {
			stripe := int64(r.IntN(int(base.Size()/8192/writers)))*writers + int64(g)
			off := stripe*8192 + r.Int64N(4096)
			plans[g] = append(plans[g], write{off, qemutest.Pattern(byte(g*50+i), 1+r.IntN(4096))})
		}
		wg.Go(func() {
			for _, w := range plans[g] {
				if _, err := o.WriteAt(w.data, w.off); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() { // a reader in between
		buf := make([]byte, 256<<10)
		for off := int64(0); off < base.Size(); off += int64(len(buf)) {
			if _, err := o.ReadAt(buf, off); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	want := raw
	for _, p := range plans {
		want = apply(want, p)
	}
	var all []write
	for _, p := range plans {
		all = append(all, p...)
	}
	sameAsQEMU(t, path, qemuOverlay(t, t.TempDir(), base, 4096, all), want)
}

// TestRefusals: an existing file is continued only if it is an overlay
// of this image that the writer can write, and is left as it was
// otherwise.
func TestRefusals(t *testing.T) {
	dir := t.TempDir()
	base, _ := makeBase(t, dir)
	other := filepath.Join(dir, "other.qcow2")
	qemutest.Create(t, other, "qcow2", "1M")
	overlayOf := func(name string, opts ...string) func(t *testing.T) string {
		return func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), name)
			qemutest.Create(t, p, "qcow2", fmt.Sprint(base.Size()), append([]string{"backing_file=" + base.Path(), "backing_fmt=qcow2"}, opts...)...)
			return p
		}
	}
	for _, tc := range []struct {
		name, reason string
		make         func(t *testing.T) string
	}{
		{"a raw file", "not a qcow2 image", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "raw")
			qemutest.WriteFile(t, p, 0, qemutest.Pattern(1, 1<<20))
			return p
		}},
		{"an image with no backing file", "no backing file", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "plain.qcow2")
			qemutest.Create(t, p, "qcow2", "3M")
			return p
		}},
		{"an overlay of another image", "not this image", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "o.qcow2")
			qemutest.Create(t, p, "qcow2", "3M", "backing_file="+other, "backing_fmt=qcow2")
			return p
		}},
		{"snapshots", "internal snapshots", func(t *testing.T) string {
			p := overlayOf("s.qcow2")(t)
			qemutest.Run(t, "qemu-img", "snapshot", "-c", "s1", p)
			return p
		}},
		{"compressed clusters", "compressed clusters", func(t *testing.T) string {
			p := overlayOf("c.qcow2")(t)
			qemutest.IO(t, p, "write -c -P 0x44 0 64k")
			return p
		}},
		{"extended L2", "incompatible features", overlayOf("x.qcow2", "extended_l2=on")},
		{"encrypted", "encrypted", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "e.qcow2")
			qemutest.CreateEncrypted(t, p, "qcow2", "3M", "secret", "encrypt.format=luks", "backing_file="+base.Path(), "backing_fmt=qcow2")
			return p
		}},
		{"refcount bits 8", "refcounts are 8 bits", overlayOf("r.qcow2", "refcount_bits=8")},
		{"a leak is not a refusal", "", func(t *testing.T) string {
			p := overlayOf("l.qcow2")(t)
			qemutest.IO(t, p, "write -P 0x55 0 64k")
			f := qemutest.ReadImageFile(t, p)
			f.Leak()
			f.Save()
			return p
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.make(t)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			o, err := Open(path, base, Backing{base.Path(), "qcow2"}, Options{})
			if tc.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				o.Close()
				return
			}
			if err == nil {
				o.Close()
				t.Fatalf("continued; want a refusal (%s)", tc.reason)
			}
			if _, ok := err.(*RefusedError); !ok || !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("error %q (%T), want a *RefusedError saying %q", err, err, tc.reason)
			}
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Errorf("the refused file was changed")
			}
		})
	}
}
