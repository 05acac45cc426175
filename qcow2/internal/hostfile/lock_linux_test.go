package hostfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func holdByte(t *testing.T, f *os.File, b int64) {
	t.Helper()
	lk := syscall.Flock_t{Type: syscall.F_RDLCK, Whence: io.SeekStart, Start: b, Len: 1}
	if err := syscall.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
}

func tempImage(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// mustOpen opens path for the rest of the test.
func mustOpen(t *testing.T, path string, flag int) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
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
			path := tempImage(t)
			other := mustOpen(t, path, os.O_RDONLY)
			for _, b := range tc.otherHolds {
				holdByte(t, other, b)
			}
			err := lockFile(mustOpen(t, path, os.O_RDONLY), tc.forceShare)
			if tc.wantLocked && !errors.Is(err, ErrLocked) {
				t.Fatalf("lockFile: %v, want ErrLocked", err)
			}
			if !tc.wantLocked && err != nil {
				t.Fatalf("lockFile: %v, want no error", err)
			}
		})
	}
}

// TestLockKeepsWritersOut checks what a QEMU writer sees once we hold the
// locks: it cannot take write's byte exclusively.
func TestLockKeepsWritersOut(t *testing.T) {
	path := tempImage(t)
	if err := lockFile(mustOpen(t, path, os.O_RDONLY), false); err != nil {
		t.Fatal(err)
	}
	w := mustOpen(t, path, os.O_RDWR)
	// A writer checks that nobody unshares write: byte 201.
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart, Start: 201, Len: 1}
	if err := syscall.FcntlFlock(w.Fd(), unix.F_OFD_GETLK, &lk); err != nil || lk.Type == syscall.F_UNLCK {
		t.Fatalf("a writer would not see our lock on byte 201: %v, type %d", err, lk.Type)
	}
}
