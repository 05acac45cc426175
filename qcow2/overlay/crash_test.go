package overlay

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// recorder is an overlay's file in memory that keeps every write and
// sync in order, so that a test can rebuild the file as a crash at any
// point would have left it.
type recorder struct {
	mu   sync.Mutex
	data []byte
	ops  []op
}

type op struct {
	off  int64
	data []byte // nil for a sync
}

func (r *recorder) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if off >= int64(len(r.data)) {
		return 0, io.EOF
	}
	n := copy(p, r.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (r *recorder) WriteAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.data = grow(r.data, off+int64(len(p)))
	copy(r.data[off:], p)
	r.ops = append(r.ops, op{off, bytes.Clone(p)})
	return len(p), nil
}

func (r *recorder) Sync() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op{})
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

func grow(b []byte, n int64) []byte {
	if int64(len(b)) < n {
		b = append(b, make([]byte, n-int64(len(b)))...)
	}
	return b
}

// crashState is the file after the first k operations, keeping of the
// writes since the last sync those keep says (a process killed keeps
// them all, a power loss may drop any).
func (r *recorder) crashState(k int, keep func(i int) bool) []byte {
	lastSync := 0
	for i := range k {
		if r.ops[i].data == nil {
			lastSync = i
		}
	}
	kept := func(i int) bool { return r.ops[i].data != nil && (i < lastSync || keep(i)) }
	var size int64
	for i, o := range r.ops[:k] {
		if kept(i) {
			size = max(size, o.off+int64(len(o.data)))
		}
	}
	b := make([]byte, size)
	for i, o := range r.ops[:k] {
		if kept(i) {
			copy(b[o.off:], o.data)
		}
	}
	return b
}

// TestCrashAtEveryStep stops the writer's file at many points of runs of
// writes and flushes and checks that QEMU opens what is left: qemu-img
// check finds at most leaks, and every write acknowledged by a Sync
// before the crash reads back. A small run stops at every operation; a
// run in which the refcount table moves, at a sample (each point costs a
// few QEMU runs; under -race copying its 10 MiB states costs more).
func TestCrashAtEveryStep(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int64
		writes func(r *rand.Rand, size int64) []write
		syncAt func(i int) bool // after write i
		sample bool
		moves  bool
	}{
		{"every operation", baseSize, func(r *rand.Rand, size int64) []write {
			// Large writes too: one flush then makes several refcount
			// blocks, each counted by the next.
			ws := randomWrites(r, 50, 512, size)
			for i := range 8 {
				n := 64<<10 + r.IntN(320<<10)
				ws = append(ws, write{r.Int64N(size - int64(n)), qemutest.Pattern(byte(200+i), n)})
			}
			r.Shuffle(len(ws), func(i, j int) { ws[i], ws[j] = ws[j], ws[i] })
			return ws
		}, func(i int) bool { return i%5 == 4 }, false, false},
		{"the refcount table moves", 12 << 20, func(r *rand.Rand, size int64) []write {
			ws := randomWrites(r, 80, 512, size)
			// Then 9 MiB in 1 MiB writes: with 512-byte clusters the
			// file outgrows the refcount table's 8 MiB.
			for i := range 9 {
				ws = append(ws, write{int64(i) << 20, qemutest.Pattern(byte(100+i), 1<<20)})
			}
			return ws
		}, func(i int) bool { return i%9 == 8 || i >= 80 }, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			crashes(t, tc.size, tc.writes, tc.syncAt, tc.sample, tc.moves)
		})
	}
}

func crashes(t *testing.T, size int64, writes func(*rand.Rand, int64) []write, syncAt func(int) bool, sample, moves bool) {
	dir := t.TempDir()
	base, raw := makeBaseOf(t, dir, size)
	rec := &recorder{}
	o, err := build(rec, base, Backing{base.Path(), "qcow2"}, Options{ClusterBits: 9, TableCacheSize: 16 << 9, CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	built := rec.count()
	r := rand.New(rand.NewPCG(5, 5))
	ws := writes(r, size)
	type synced struct{ ops, writes int }
	marks := []synced{{built, 0}}
	for i, w := range ws {
		if _, err := o.WriteAt(w.data, w.off); err != nil {
			t.Fatal(err)
		}
		if syncAt(i) {
			if err := o.Sync(); err != nil {
				t.Fatal(err)
			}
			marks = append(marks, synced{rec.count(), i + 1})
		}
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	marks = append(marks, synced{rec.count(), len(ws)})
	if moved := binary.BigEndian.Uint64(rec.data[offRefcountTable:]) != 512; moved != moves {
		t.Fatalf("the refcount table moved: %v, want %v", moved, moves)
	}

	// Crash points: every operation, or after a quarter of the syncs and
	// two writes on, and a sample of the rest.
	points := map[int]bool{}
	for i, o := range rec.ops {
		switch {
		case i < built:
		case !sample:
			points[i+1] = true
		case (o.data == nil && r.IntN(4) == 0) || r.IntN(100) == 0:
			points[i] = true
			points[min(i+2, len(rec.ops))] = true
		}
	}
	t.Logf("%d operations, %d crash points", len(rec.ops), len(points))
	crash := filepath.Join(dir, "crash.qcow2")
	n := 0
	// What the disk holds once the first n writes are durable, and the
	// bytes the writes after them may or may not have changed.
	type expected struct {
		want []byte
		sure [][2]int64 // ranges no write after the first n touched
	}
	cache := map[int]expected{}
	expect := func(n int) expected {
		e, ok := cache[n]
		if !ok {
			unsure := make([]bool, size+1)
			for _, w := range ws[n:] {
				for i := range w.data {
					unsure[w.off+int64(i)] = true
				}
			}
			e.want = apply(raw, ws[:n])
			start := int64(-1)
			for i := range int64(size + 1) {
				switch {
				case !unsure[i] && i < size && start < 0:
					start = i
				case (unsure[i] || i == size) && start >= 0:
					e.sure = append(e.sure, [2]int64{start, i})
					start = -1
				}
			}
			cache[n] = e
		}
		return e
	}
	for k := range points {
		for _, kind := range []struct {
			name string
			keep func(int) bool
		}{
			{"killed", func(int) bool { return true }},
			{"power lost", func(int) bool { return false }},
			// Of two writes since the last sync, either may be lost.
			{"power lost, odd writes kept", func(i int) bool { return i%2 == 1 }},
			{"power lost, even writes kept", func(i int) bool { return i%2 == 0 }},
		} {
			if err := os.WriteFile(crash, rec.crashState(k, kind.keep), 0o600); err != nil {
				t.Fatal(err)
			}
			what := fmt.Sprintf("crash after operation %d of %d (%s)", k, len(rec.ops), kind.name)
			if out, err := exec.Command("qemu-img", "check", crash).CombinedOutput(); err != nil {
				if x, ok := err.(*exec.ExitError); !ok || x.ExitCode() != 3 {
					t.Fatalf("%s: qemu-img check: %v\n%s", what, err, out)
				}
			}
			// What the last Sync before the crash acknowledged is there.
			durable := 0
			for _, m := range marks {
				if m.ops <= k {
					durable = m.writes
				}
			}
			// Our reader for every point, QEMU's for one in four (with
			// 512-byte clusters a convert takes 40 ms).
			e := expect(durable)
			img, err := qcow2.Open(crash, qcow2.Options{})
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			got := make([]byte, size)
			if _, err := img.ReadAt(got, 0); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			readers := [][]byte{got}
			if n%4 == 0 {
				readers = append(readers, qemutest.RawBytes(t, crash))
			}
			n++
			for _, got := range readers {
				for _, r := range e.sure {
					if !bytes.Equal(got[r[0]:r[1]], e.want[r[0]:r[1]]) {
						i := r[0] + int64(qemutest.FirstDiff(got[r[0]:r[1]], e.want[r[0]:r[1]]))
						t.Fatalf("%s: guest byte %d is %#x, want %#x (%d writes synced)", what, i, got[i], e.want[i], durable)
					}
				}
			}
			res, err := img.Check()
			img.Close()
			if err != nil || res.Corruptions > 0 || res.CheckErrors > 0 {
				t.Fatalf("%s: our check: %v %+v", what, err, res)
			}
		}
	}
}
