package integration

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/integration/internal/proc"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// compressibleImage makes a zstd-compressed image with 64 KiB clusters of
// half random, half zero data, and returns it with QEMU's raw bytes.
func compressibleImage(t *testing.T, dir string, size int64) (string, []byte) {
	t.Helper()
	raw := filepath.Join(dir, "src.raw")
	for off := int64(0); off < size; off += 64 << 10 {
		qemutest.WriteFile(t, raw, off, qemutest.Pattern(byte(off>>16), 32<<10))
	}
	os.Truncate(raw, size)
	image := filepath.Join(dir, "storm.qcow2")
	sh(t, "qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", raw, image)
	return image, qemutest.RawBytes(t, image)
}

// checkingReaders starts n goroutines that read disk at random and check
// every read against want; the returned function stops them, fails the
// test on any error, and returns how many reads were checked.
func checkingReaders(t *testing.T, n int, disk string, want []byte, seed uint64) func() int64 {
	stop := make(chan struct{})
	var reads atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() { errs <- directReads(disk, want, seed+uint64(i), stop, &reads) })
	}
	return func() int64 {
		close(stop)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		return reads.Load()
	}
}

// directReads reads disk.raw with O_DIRECT, so every read reaches the
// server, and checks each against want.
func directReads(disk string, want []byte, seed uint64, stop <-chan struct{}, reads *atomic.Int64) error {
	f, err := os.OpenFile(disk, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	r := rand.New(rand.NewPCG(seed, 7))
	buf := alignedBuffer(1 << 20)
	blocks := int64(len(want)) / 4096
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		off := r.Int64N(blocks) * 4096
		n := min(int64(1+r.IntN(256))*4096, int64(len(want))-off)
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return fmt.Errorf("read at %#x, %d bytes: %w", off, n, err)
		}
		if !bytes.Equal(buf[:n], want[off:off+n]) {
			return fmt.Errorf("read at %#x, %d bytes: differs from QEMU", off, n)
		}
		reads.Add(1)
	}
}

// TestReadStormWithTinyCaches runs fio with 8 jobs and 8 checking readers
// at once, against a mount whose caches are too small to hold anything.
func TestReadStormWithTinyCaches(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "fio")
	image, want := compressibleImage(t, t.TempDir(), 48<<20)
	mnt := mountImage(t, image, "--l2-cache-size", "65536", "--cluster-cache-size", "131072")
	disk := filepath.Join(mnt, "disk.raw")
	fio := exec.Command("fio", "--name=storm", "--filename="+disk, "--readonly", "--rw=randread",
		"--bs=4k", "--numjobs=8", "--ioengine=psync", "--direct=1", "--time_based", "--runtime=4", "--group_reporting")
	var fioOut bytes.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	stop := checkingReaders(t, 8, disk, want, 0)
	fioErr := fio.Wait()
	reads := stop()
	if fioErr != nil || !strings.Contains(fioOut.String(), "err= 0") {
		t.Fatalf("fio: %v\n%s", fioErr, fioOut.String())
	}
	t.Logf("8 fio jobs and 8 checking readers for 4s: %d checked reads, all equal to QEMU's", reads)
}

// TestImageTruncatedWhileMounted: the clusters that are gone read as EIO,
// the rest still reads, and the mount stays up.
func TestImageTruncatedWhileMounted(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "src.raw")
	qemutest.WriteFile(t, raw, 0, qemutest.Pattern(4, 8<<20))
	image := filepath.Join(dir, "img.qcow2")
	sh(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, image)
	want := qemutest.RawBytes(t, image)
	mnt := mountImage(t, image)
	st, _ := os.Stat(image)
	cut := st.Size() / 2
	if err := os.Truncate(image, cut); err != nil {
		t.Fatal(err)
	}
	hosts := hostOffsets(t, dir, raw, int64(len(want)))
	f, err := os.OpenFile(filepath.Join(mnt, "disk.raw"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := alignedBuffer(64 << 10)
	gone, kept := 0, 0
	for i, host := range hosts {
		off := int64(i) * 64 << 10
		_, err := f.ReadAt(buf, off)
		if host+64<<10 > cut {
			gone++
			if !errors.Is(err, syscall.EIO) {
				t.Fatalf("cluster %d (host %#x, past the new end %#x): %v, want EIO", i, host, cut, err)
			}
			continue
		}
		kept++
		if err != nil || !bytes.Equal(buf, want[off:off+64<<10]) {
			t.Fatalf("cluster %d (host %#x): %v or wrong bytes", i, host, err)
		}
	}
	if gone == 0 || kept == 0 {
		t.Fatalf("%d clusters gone, %d kept: the test cut in the wrong place", gone, kept)
	}
	if _, err := os.Stat(filepath.Join(mnt, "disk.raw")); err != nil {
		t.Fatalf("mount gone: %v", err)
	}
}

// hostOffsets returns the host offset of each 64 KiB guest cluster of the
// untruncated image, from a copy converted the same way.
func hostOffsets(t *testing.T, dir, raw string, size int64) []int64 {
	t.Helper()
	again := filepath.Join(dir, "again.qcow2")
	sh(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, again)
	out := sh(t, "qemu-img", "map", "--output=json", again)
	hosts := make([]int64, size/(64<<10))
	for _, line := range strings.Split(out, "\n") {
		var start, length, offset int64
		i := strings.Index(line, `"start": `)
		j := strings.Index(line, `"offset": `)
		if i < 0 || j < 0 {
			continue
		}
		fmt.Sscanf(line[i:], `"start": %d, "length": %d`, &start, &length)
		fmt.Sscanf(line[j:], `"offset": %d`, &offset)
		for c := start; c < start+length; c += 64 << 10 {
			hosts[c/(64<<10)] = offset + (c - start)
		}
	}
	return hosts
}

func TestSIGKILLLeavesAClearableMount(t *testing.T) {
	requireFUSE(t)
	image, _ := filepath.Abs("../testdata/images/v3-4k.qcow2")
	mnt := t.TempDir()
	if out, code := run(t, image, mnt); code != 0 {
		t.Fatalf("mount: %s", out)
	}
	pid := serverPID(mnt)
	syscall.Kill(pid, syscall.SIGKILL)
	waitFor(t, "the server to die", 5*time.Second, func() bool { return !alive(pid) })
	// A request caught in the connection's teardown may fail with EIO;
	// once the kernel has noticed, the mountpoint says ENOTCONN.
	waitFor(t, "ENOTCONN from the dead mount", 5*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(mnt, "disk.raw"))
		return errors.Is(err, syscall.ENOTCONN)
	})
	sh(t, "fusermount3", "-u", mnt)
	mountImage(t, image) // a fresh mountpoint works, and so does the old one:
	if out, code := run(t, image, mnt); code != 0 {
		t.Fatalf("remount on the cleared mountpoint: %s", out)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	if _, err := os.Stat(filepath.Join(mnt, "disk.raw")); err != nil {
		t.Fatal(err)
	}
}

// TestSIGTERMDuringReadStorm: readers keep the mount busy, so SIGTERM
// waits; every read is answered correctly; once the readers close their
// files, the mount goes away and the process exits.
func TestSIGTERMDuringReadStorm(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img")
	image, want := compressibleImage(t, t.TempDir(), 16<<20)
	mnt := mountImage(t, image)
	pid := serverPID(mnt)
	stop := checkingReaders(t, 8, filepath.Join(mnt, "disk.raw"), want, 100)
	time.Sleep(500 * time.Millisecond)
	syscall.Kill(pid, syscall.SIGTERM)
	time.Sleep(1500 * time.Millisecond)
	reads := stop()
	waitFor(t, "the unmount after the readers closed", 10*time.Second, func() bool { return !isMounted(mnt) && !alive(pid) })
	t.Logf("%d reads answered, all correct, around SIGTERM", reads)
}

// TestMemoryBoundedOn1TiB reads a 1 TiB sparse image, whose L2 tables
// (about 100 MiB) do not fit the default cache, at random for a while
// (QCOWMOUNT_SOAK_SECONDS, default 8), and checks the serving process's
// peak memory. It uses a binary built without the race detector, whose
// shadow memory would swamp the figure.
func TestMemoryBoundedOn1TiB(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "qemu-io")
	seconds := 8
	if s, err := strconv.Atoi(os.Getenv("QCOWMOUNT_SOAK_SECONDS")); err == nil {
		seconds = s
	}
	dir := t.TempDir()
	plain := plainBinary(t)
	image := filepath.Join(dir, "huge.qcow2")
	qemutest.Create(t, image, "qcow2", "1T")
	// One 64 KiB write in each of 1600 L2 tables' ranges (512 MiB each).
	var cmds []string
	pattern := map[int64]byte{}
	for i := int64(0); i < 1600; i++ {
		off := i*(512<<20) + (i*7919%8192)*(64<<10)
		pattern[off] = byte(i%255 + 1)
		cmds = append(cmds, fmt.Sprintf("write -P %d %d 64k", pattern[off], off))
	}
	qemutest.IO(t, image, cmds...)
	mnt := t.TempDir()
	start := time.Now()
	if out, err := exec.Command(plain, image, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	ready := time.Since(start)
	t.Cleanup(func() { unmount(t, mnt) })
	var pid int
	waitFor(t, "the server", 5*time.Second, func() bool {
		pid = proc.Find(plain, mnt)
		return pid != 0
	})
	f, err := os.OpenFile(filepath.Join(mnt, "disk.raw"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	offsets := make([]int64, 0, len(pattern))
	for off := range pattern {
		offsets = append(offsets, off)
	}
	var reads atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 3))
			buf := alignedBuffer(4096)
			for time.Now().Before(deadline) {
				off := offsets[r.IntN(len(offsets))] + r.Int64N(16)*4096 // half written, half unallocated
				if r.IntN(4) == 0 {
					off = r.Int64N(1<<40/4096) * 4096
				}
				if _, err := f.ReadAt(buf, off); err != nil {
					t.Errorf("read at %#x: %v", off, err)
					return
				}
				base := off &^ (64<<10 - 1)
				wantByte := pattern[base]
				if !bytes.Equal(buf, bytes.Repeat([]byte{wantByte}, 4096)) {
					t.Errorf("read at %#x: want bytes %#x", off, wantByte)
					return
				}
				reads.Add(1)
			}
		})
	}
	wg.Wait()
	peak := proc.PeakRSS(pid)
	t.Logf("1 TiB image: mount ready in %v; %d random 4 KiB reads in %ds; server peak RSS %d MiB", ready, reads.Load(), seconds, peak>>10)
	if peak > 128<<10 {
		t.Fatalf("peak RSS %d MiB exceeds 128 MiB", peak>>10)
	}
}
