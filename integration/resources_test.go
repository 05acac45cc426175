package integration

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
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

// TestRemoteChainOneMemoryBudget: the files of a remote chain share one
// cache and one budget of requests in flight, so that hashing a chain of
// ten remote layers takes the memory of one remote file, not ten (the
// default --remote-cache-size of 64 MiB, 32 MiB in flight, the image
// caches and the runtime), and reads what QEMU reads.
func TestRemoteChainOneMemoryBudget(t *testing.T) {
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	const layers, share = 10, 32 << 20
	prev := ""
	for i := range layers {
		name := fmt.Sprintf("layer%d.qcow2", i)
		opts := []string{}
		if prev != "" {
			opts = append(opts, "backing_file="+prev, "backing_fmt=qcow2")
		}
		qemutest.Create(t, filepath.Join(dir, name), "qcow2", fmt.Sprint(layers*share), opts...)
		qemutest.IO(t, filepath.Join(dir, name), fmt.Sprintf("write -P %d %d %d", 0x40+i, i*share, share))
		prev = name
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer srv.Close()
	raw, err := os.ReadFile(qemutest.Raw(t, filepath.Join(dir, prev)))
	if err != nil {
		t.Fatal(err)
	}
	out, peak := peakOf(t, "hash", "--no-partitions", srv.URL+"/"+prev)
	if out != qemutest.SHA256(raw)+"  disk.raw\n" {
		t.Fatalf("hash of the remote chain: %s", out)
	}
	const bound = 200 << 20
	t.Logf("peak RSS %d MiB for %d remote layers of %d MiB each", peak>>20, layers, share>>20)
	if peak > bound {
		t.Errorf("peak RSS %d MiB, over %d MiB: the layers do not share one budget", peak>>20, bound>>20)
	}
}
