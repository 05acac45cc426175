package fusefs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
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
	server, err := Mount(mnt, disk, Options{Source: "/images/test.qcow2", ModTime: time.Unix(1e9, 0), Log: zap.New(core)})
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
			_, err := Mount(t.TempDir(), &flakyDisk{}, Options{MountOptions: []string{tc.opt}})
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.wantErr)) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
		})
	}
}
