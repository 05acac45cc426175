package qcow2

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func holdByte(t *testing.T, f *os.File, b int64) {
	t.Helper()
	lk := syscall.Flock_t{Type: syscall.F_RDLCK, Whence: io.SeekStart, Start: b, Len: 1}
	if err := syscall.FcntlFlock(f.Fd(), fOFDSetLK, &lk); err != nil {
		t.Fatal(err)
	}
}

func TestLockFile(t *testing.T) {
	tests := []struct {
		name       string
		otherHolds []int64 // bytes another opener holds
		forceShare bool
		wantLocked bool
	}{
		{"nobody else", nil, false, false},
		{"another reader", []int64{100, 201, 203}, false, false},
		{"a writer (VM)", []int64{100, 101, 103, 201, 203}, false, true},
		{"a writer, force-share", []int64{100, 101, 103, 201, 203}, true, false},
		{"a resizer", []int64{103}, false, true},
		{"someone forbids consistent reads", []int64{200}, false, true},
		{"someone forbids consistent reads, force-share", []int64{200}, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "img")
			os.WriteFile(path, make([]byte, 4096), 0o644)
			other, _ := os.Open(path)
			defer other.Close()
			for _, b := range tc.otherHolds {
				holdByte(t, other, b)
			}
			f, _ := os.Open(path)
			defer f.Close()
			err := lockFile(f, tc.forceShare)
			if got := errors.Is(err, ErrLocked); got != tc.wantLocked {
				t.Fatalf("lockFile: %v, want locked %v", err, tc.wantLocked)
			}
		})
	}
}

// TestLockKeepsWritersOut checks what a QEMU writer sees once we hold the
// locks: it cannot take write's byte exclusively.
func TestLockKeepsWritersOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	os.WriteFile(path, make([]byte, 4096), 0o644)
	f, _ := os.Open(path)
	defer f.Close()
	if err := lockFile(f, false); err != nil {
		t.Fatal(err)
	}
	w, _ := os.OpenFile(path, os.O_RDWR, 0)
	defer w.Close()
	// A writer checks that nobody unshares write: byte 201.
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart, Start: 201, Len: 1}
	if err := syscall.FcntlFlock(w.Fd(), fOFDGetLK, &lk); err != nil || lk.Type == syscall.F_UNLCK {
		t.Fatalf("a writer would not see our lock on byte 201: %v, type %d", err, lk.Type)
	}
}
