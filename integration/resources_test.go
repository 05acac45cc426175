package integration

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/qcowmount/qcowmount/integration/internal/proc"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

var (
	plainOnce sync.Once
	plainBin  string
	plainErr  error
)

// plainBinary builds qcowmount without the race detector, whose shadow
// memory would swamp memory figures; once per run.
func plainBinary(t *testing.T) string {
	t.Helper()
	plainOnce.Do(func() {
		plainBin = filepath.Join(filepath.Dir(bin), "qcowmount-plain")
		out, err := exec.Command("go", "build", "-o", plainBin, "../cmd/qcowmount").CombinedOutput()
		if err != nil {
			plainErr = err
			t.Logf("%s", out)
		}
	})
	if plainErr != nil {
		t.Fatalf("building qcowmount without -race: %v", plainErr)
	}
	return plainBin
}

// The memory bound for images whose files take little room on disk,
// whatever their headers declare: 128 MiB beyond the cache budgets.
const (
	memoryBound = 128 << 20
	cacheBudget = (32 + 16) << 20 // the default L2 and cluster caches at most
)

// peakOf runs the plain binary under GNU time and returns its output and
// peak RSS. Not through our own wait4: a child forked from this large
// test process inherits its memory high-water mark in ru_maxrss.
func peakOf(t *testing.T, args ...string) (string, int64) {
	t.Helper()
	qemutest.Require(t, "/usr/bin/time")
	report := filepath.Join(t.TempDir(), "rss")
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", report, plainBinary(t)}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("qcowmount %q: %v: %.2000s", args, err, out)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	kib, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatalf("GNU time reported %q: %v", b, err)
	}
	return string(out), kib << 10
}

// TestMemoryBoundedForCraftedImages: small sparse files that declare the
// largest tables QEMU accepts. info (text and JSON) and a mount read at
// random stay under the bound.
func TestMemoryBoundedForCraftedImages(t *testing.T) {
	requireFUSE(t)
	tests := []struct {
		name      string
		make      func(t *testing.T, dir string) string
		mountArgs []string
		maxOutput int
	}{
		{"64 layers each declaring a 32 MiB L1 table", func(t *testing.T, dir string) string {
			return qemutest.MaxL1Chain(t, dir, 64)
		}, nil, 1 << 20},
		{"qcow version 1 declaring a 512 MiB L1 table", func(t *testing.T, dir string) string {
			return qemutest.Qcow1HugeL1(t, dir)
		}, nil, 1 << 20},
		{"1023 snapshots with 64 KiB names", func(t *testing.T, dir string) string {
			return qemutest.ManySnapshots(t, dir, 1023, 65535)
		}, []string{"--snapshot", "00001023"}, 4 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			image := tc.make(t, t.TempDir())
			for _, args := range [][]string{{"info", image}, {"info", "--json", "--backing-chain", image}} {
				out, peak := peakOf(t, args...)
				t.Logf("%q: peak RSS %d MiB, %d bytes of output", args, peak>>20, len(out))
				if peak > memoryBound {
					t.Errorf("%q: peak RSS %d MiB exceeds %d MiB", args, peak>>20, memoryBound>>20)
				}
				if len(out) > tc.maxOutput {
					t.Errorf("%q printed %d bytes", args, len(out))
				}
			}
			mnt := t.TempDir()
			plain := plainBinary(t)
			if out, err := exec.Command(plain, append(tc.mountArgs, image, mnt)...).CombinedOutput(); err != nil {
				t.Fatalf("mount: %v: %s", err, out)
			}
			t.Cleanup(func() { unmount(t, mnt) })
			pid := proc.Find(plain, mnt)
			if pid == 0 {
				t.Fatal("no server process")
			}
			f, err := os.OpenFile(filepath.Join(mnt, "disk.raw"), os.O_RDONLY|syscall.O_DIRECT, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(1, 2))
			buf := alignedBuffer(4096)
			for range 20000 {
				off := r.Int64N(st.Size()/4096) * 4096
				if _, err := f.ReadAt(buf, off); err != nil {
					t.Fatalf("read at %#x: %v", off, err)
				}
			}
			peak := proc.PeakRSS(pid) << 10
			t.Logf("server: peak RSS %d MiB after 20000 random reads", peak>>20)
			if peak > memoryBound+cacheBudget {
				t.Errorf("server peak RSS %d MiB exceeds %d MiB", peak>>20, (memoryBound+cacheBudget)>>20)
			}
		})
	}
}
