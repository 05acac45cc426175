package fusefs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// flakyDisk serves a pattern and fails reads that touch [badStart, badEnd).
type flakyDisk struct {
	data             []byte
	badStart, badEnd int64
}

func (d *flakyDisk) Size() int64 { return int64(len(d.data)) }

func (d *flakyDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < d.badEnd && off+int64(len(p)) > d.badStart {
		return 0, fmt.Errorf("L2 entry at offset 0x1234: reserved bits set")
	}
	n := copy(p, d.data[min(off, int64(len(d.data))):])
	return n, nil
}

func mountFlaky(t *testing.T) (string, *flakyDisk, *observer.ObservedLogs) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		qemutest.Missing(t, "/dev/fuse is missing")
	}
	disk := &flakyDisk{data: qemutest.Pattern(3, 1<<20), badStart: 512 << 10, badEnd: 516 << 10}
	core, logs := observer.New(zap.InfoLevel)
	mnt := t.TempDir()
	server, err := Mount(mnt, []File{{DiskName, disk}}, Options{Source: "/images/test.qcow2", ModTime: time.Unix(1e9, 0), Log: zap.New(core)})
	if err != nil {
		qemutest.Missing(t, "cannot mount FUSE here: "+err.Error())
	}
	t.Cleanup(func() { server.Unmount() })
	return mnt, disk, logs
}

func TestReadErrorIsEIOAndMountStaysUp(t *testing.T) {
	mnt, disk, logs := mountFlaky(t)
	f, err := os.Open(filepath.Join(mnt, DiskName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// O_DIRECT is not needed: the failing range is never cached.
	buf := make([]byte, 4096)
	tests := []struct {
		off     int64
		wantErr bool
	}{
		{0, false},
		{512 << 10, true},
		{600 << 10, false},
		{(1 << 20) - 4096, false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.off), func(t *testing.T) {
			_, err := f.ReadAt(buf, tc.off)
			if tc.wantErr {
				if !errors.Is(err, syscall.EIO) {
					t.Fatalf("err %v, want EIO", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, disk.data[tc.off:tc.off+4096]) {
				t.Fatal("wrong bytes")
			}
		})
	}
	found := false
	for _, e := range logs.All() {
		if e.Message == "read failed" && e.ContextMap()["guest_offset"] == int64(512<<10) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no log line names the failed read's offset: %v", logs.All())
	}
}

func TestAttributes(t *testing.T) {
	mnt, _, _ := mountFlaky(t)
	st, err := os.Stat(filepath.Join(mnt, DiskName))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode() != 0o444 || st.Size() != 1<<20 || !st.ModTime().Equal(time.Unix(1e9, 0)) {
		t.Fatalf("mode %v size %d mtime %v", st.Mode(), st.Size(), st.ModTime())
	}
	if _, err := os.OpenFile(filepath.Join(mnt, DiskName), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("open for writing: %v, want EROFS", err)
	}
}

func TestMountOptions(t *testing.T) {
	tests := []struct {
		opt     string
		wantErr string
	}{
		{"rw", "read-only"},
		{"uid=abc", "not a number"},
	}
	for _, tc := range tests {
		t.Run(tc.opt, func(t *testing.T) {
			_, err := Mount(t.TempDir(), []File{{DiskName, &flakyDisk{}}}, Options{MountOptions: []string{tc.opt}})
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.wantErr)) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// sparseDisk is 2 MiB of zeros with data in [64 KiB, 128 KiB) and
// [1 MiB, 1 MiB + 4 KiB); it tells its holes.
type sparseDisk struct{ flakyDisk }

func (d *sparseDisk) Allocation(off, limit int64) (bool, int64, error) {
	runs := []struct {
		end  int64
		data bool
	}{{64 << 10, false}, {128 << 10, true}, {1 << 20, false}, {1<<20 + 4096, true}, {2 << 20, false}}
	for _, r := range runs {
		if off < r.end {
			return r.data, min(limit, r.end-off), nil
		}
	}
	return false, 0, fmt.Errorf("offset %d past the disk", off)
}

// TestFilesAndHoles: every file is served; lseek finds data and holes
// where the disk says they are, and st_blocks counts only the data.
func TestFilesAndHoles(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		qemutest.Missing(t, "/dev/fuse is missing")
	}
	sparse := &sparseDisk{flakyDisk{data: make([]byte, 2<<20)}}
	plain := &flakyDisk{data: qemutest.Pattern(5, 1<<20)}
	mnt := t.TempDir()
	server, err := Mount(mnt, []File{{DiskName, sparse}, {"p1.raw", plain}}, Options{})
	if err != nil {
		qemutest.Missing(t, "cannot mount FUSE here: "+err.Error())
	}
	t.Cleanup(func() { server.Unmount() })
	entries, err := os.ReadDir(mnt)
	if err != nil || len(entries) != 2 || entries[0].Name() != DiskName || entries[1].Name() != "p1.raw" {
		t.Fatalf("directory: %v %v", entries, err)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "p1.raw"))
	if err != nil || !bytes.Equal(got, plain.data) {
		t.Fatalf("p1.raw: %v", err)
	}
	blocks := func(name string) int64 {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(mnt, name), &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks
	}
	if b := blocks(DiskName); b != (64<<10+4096)/512 {
		t.Errorf("disk.raw: st_blocks %d, want %d", b, (64<<10+4096)/512)
	}
	if b := blocks("p1.raw"); b != (1<<20)/512 {
		t.Errorf("p1.raw: st_blocks %d, want %d", b, (1<<20)/512)
	}
	f, err := os.Open(filepath.Join(mnt, DiskName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tests := []struct {
		off     int64
		whence  int
		want    int64
		wantErr error
	}{
		{0, unix.SEEK_DATA, 64 << 10, nil},
		{0, unix.SEEK_HOLE, 0, nil},
		{70000, unix.SEEK_DATA, 70000, nil},
		{70000, unix.SEEK_HOLE, 128 << 10, nil},
		{128 << 10, unix.SEEK_DATA, 1 << 20, nil},
		{1<<20 + 4096, unix.SEEK_DATA, 0, syscall.ENXIO},
		{1<<20 + 4096, unix.SEEK_HOLE, 1<<20 + 4096, nil},
		{2 << 20, unix.SEEK_HOLE, 0, syscall.ENXIO},
	}
	for _, tc := range tests {
		got, err := unix.Seek(int(f.Fd()), tc.off, tc.whence)
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("lseek(%d, %d): %d, %v, want %v", tc.off, tc.whence, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("lseek(%d, %d) = %d, %v, want %d", tc.off, tc.whence, got, err, tc.want)
		}
	}
}

// TestAsyncDirectIO: the mount asks the kernel for ASYNC_DIO, so that a
// loop device's O_DIRECT reads come in their pieces at once; the kernel's
// INIT reply, as go-fuse logs it, says it was granted.
func TestAsyncDirectIO(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		qemutest.Missing(t, "/dev/fuse is missing")
	}
	core, logs := observer.New(zap.DebugLevel)
	disk := &flakyDisk{data: qemutest.Pattern(4, 1<<20), badStart: -1, badEnd: -1}
	server, err := Mount(t.TempDir(), []File{{DiskName, disk}}, Options{Log: zap.New(core), Debug: true})
	if err != nil {
		qemutest.Missing(t, "cannot mount FUSE here: "+err.Error())
	}
	server.Unmount()
	for _, e := range logs.All() {
		// The reply to INIT is the one that carries the protocol's version.
		if strings.Contains(e.Message, "OK, {7.") {
			if !strings.Contains(e.Message, "ASYNC_DIO") {
				t.Fatalf("the INIT reply grants no ASYNC_DIO: %s", e.Message)
			}
			return
		}
	}
	t.Fatalf("no INIT reply in the debug log (%d lines)", logs.Len())
}

// lendingDisk lends its bytes, as a remote image does, in pieces of at
// most 100 KiB, from buffers it scribbles over once they are released, and
// counts the pins not yet released; reads that touch [badStart, badEnd)
// fail to pin.
type lendingDisk struct {
	flakyDisk
	mu     sync.Mutex
	lent   int // pins so far
	pinned int // not yet released
}

func (d *lendingDisk) PinRange(off int64, n int) ([][]byte, func(), error) {
	if off < d.badEnd && off+int64(n) > d.badStart {
		return nil, nil, fmt.Errorf("the server went away")
	}
	var bufs [][]byte
	for n > 0 {
		b := slices.Clone(d.data[off : off+int64(min(n, 100<<10))])
		bufs = append(bufs, b)
		off, n = off+int64(len(b)), n-len(b)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lent++
	d.pinned++
	return bufs, func() {
		for _, b := range bufs {
			clear(b)
		}
		d.mu.Lock()
		d.pinned--
		d.mu.Unlock()
	}, nil
}

// TestLentReads: large reads of a disk that lends its bytes (the kernel's
// readahead makes them) are answered from the lent buffers, which are
// released once the reply is written; a failed pin is EIO.
func TestLentReads(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		qemutest.Missing(t, "/dev/fuse is missing")
	}
	disk := &lendingDisk{flakyDisk: flakyDisk{data: qemutest.Pattern(5, 4<<20), badStart: 3 << 20, badEnd: 3<<20 + 1}}
	mnt := t.TempDir()
	server, err := Mount(mnt, []File{{DiskName, disk}}, Options{Log: zap.NewNop()})
	if err != nil {
		qemutest.Missing(t, "cannot mount FUSE here: "+err.Error())
	}
	t.Cleanup(func() { server.Unmount() })
	f, err := os.Open(filepath.Join(mnt, DiskName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for _, tc := range []struct {
		off     int64
		n       int
		wantErr bool
	}{
		{0, 1 << 20, false},
		{1 << 20, 256 << 10, false},
		{2 << 20, 4096, false},
		{3 << 20, 1 << 20, true},
	} {
		_, err := f.ReadAt(buf[:tc.n], tc.off)
		switch {
		case tc.wantErr && !errors.Is(err, syscall.EIO):
			t.Errorf("read at %d: %v, want EIO", tc.off, err)
		case !tc.wantErr && (err != nil || !bytes.Equal(buf[:tc.n], disk.data[tc.off:tc.off+int64(tc.n)])):
			t.Errorf("read at %d: %v, or wrong bytes", tc.off, err)
		}
	}
	// The server releases after its writev returns, which may be after
	// the reader has its bytes.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		disk.mu.Lock()
		lent, pinned := disk.lent, disk.pinned
		disk.mu.Unlock()
		if lent > 0 && pinned == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reads lent, %d not released", lent, pinned)
		}
	}
}

// memDisk is a disk in memory that takes writes, failing those that touch
// [badStart, badEnd), and counts its syncs.
type memDisk struct {
	mu               sync.Mutex
	data             []byte
	badStart, badEnd int64
	syncs            int
}

func (d *memDisk) Size() int64 { return int64(len(d.data)) }

func (d *memDisk) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return copy(p, d.data[off:]), nil
}

func (d *memDisk) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < d.badEnd && off+int64(len(p)) > d.badStart {
		return 0, errors.New("the overlay's file failed")
	}
	return copy(d.data[off:], p), nil
}

func (d *memDisk) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.syncs++
	return nil
}

// The test reads the disk under its lock: the race detector cannot see
// that the kernel's reply orders the server's write before.
func (d *memDisk) holds(p []byte, off int64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Equal(d.data[off:off+int64(len(p))], p)
}

func (d *memDisk) syncCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.syncs
}

// TestWritableMount: a writable mount writes through to the disk, syncs
// it at fsync and close, keeps its size, and answers a failed write with
// EIO and a log line; a read-only mount refuses writes.
func TestWritableMount(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		qemutest.Missing(t, "/dev/fuse is missing")
	}
	disk := &memDisk{data: make([]byte, 1<<20), badStart: 900 << 10, badEnd: 901 << 10}
	core, logs := observer.New(zap.InfoLevel)
	mnt := t.TempDir()
	server, err := Mount(mnt, []File{{DiskName, disk}}, Options{Log: zap.New(core), Writable: true})
	if err != nil {
		qemutest.Missing(t, "cannot mount FUSE here: "+err.Error())
	}
	t.Cleanup(func() { server.Unmount() })
	path := filepath.Join(mnt, DiskName)
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("disk.raw: %v, want mode 0644", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tests := []struct {
		name string
		off  int64
		n    int
		err  error // nil, or the errno
		want int   // bytes written
	}{
		{"inside", 1000, 5000, nil, 5000},
		{"to the end", 1<<20 - 100, 100, nil, 100},
		{"across the end: what fits", 1<<20 - 10, 100, nil, 10},
		{"past the end", 1 << 20, 10, syscall.ENOSPC, 0},
		{"a failing disk", 900 << 10, 10, syscall.EIO, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := qemutest.Pattern(byte(tc.off), tc.n)
			n, err := unix.Pwrite(int(f.Fd()), p, tc.off)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("pwrite: %d, %v, want %v", n, err, tc.err)
				}
				return
			}
			if err != nil || n != tc.want {
				t.Fatalf("pwrite: %d, %v, want %d", n, err, tc.want)
			}
			if !disk.holds(p[:n], tc.off) {
				t.Errorf("the disk does not hold the write")
			}
		})
	}
	if logs.FilterMessage("write failed").Len() != 1 {
		t.Errorf("the failed write was not logged once: %v", logs.All())
	}
	synced := disk.syncCount()
	if err := f.Sync(); err != nil || disk.syncCount() == synced {
		t.Errorf("fsync: %v; the disk synced %d times, before %d", err, disk.syncCount(), synced)
	}
	if err := f.Truncate(1000); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("ftruncate: %v, want EINVAL", err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 1<<20 {
		t.Errorf("the size changed: %v", err)
	}
	synced = disk.syncCount()
	f.Close()
	if disk.syncCount() == synced {
		t.Errorf("close did not sync the disk")
	}

	ro, _, _ := mountFlaky(t)
	if _, err := os.OpenFile(filepath.Join(ro, DiskName), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("a read-only mount opened for writing: %v", err)
	}
}
