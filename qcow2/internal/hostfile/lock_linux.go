package hostfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// QEMU's image locking: open file description (OFD) locks on single bytes
// of each image file. Byte 100+i means "I hold permission i", byte 200+i
// "I do not let others have permission i". We take what a read-only,
// consistent reader such as qemu-img info takes, so that a running VM and
// our mount exclude each other exactly as two QEMU processes would.
const (
	permConsistentRead = 0
	permWrite          = 1
	permWriteUnchanged = 2
	permResize         = 3
	lockHoldBase       = 100
	lockUnshareBase    = 200
)

// lockFile takes QEMU's shared locks on f for a consistent reader, after
// checking that nobody holds a conflicting one. With forceShare it takes
// only "consistent read" and checks only that no one forbids it, like
// QEMU's --force-share.
func lockFile(f *os.File, forceShare bool) error {
	check := []int64{lockUnshareBase + permConsistentRead}
	take := []int64{lockHoldBase + permConsistentRead}
	if !forceShare {
		check = append(check, lockHoldBase+permWrite, lockHoldBase+permResize)
		take = append(take, lockUnshareBase+permWrite, lockUnshareBase+permResize)
	}
	return takeLocks(f, check, take)
}

// LockWriter takes on f the locks QEMU's writer of an image takes (qemu-io,
// a running VM): it holds read, write and resize and lets nobody else
// write or resize, after checking that nobody holds a lock that conflicts.
func LockWriter(f *os.File) error {
	var check, take []int64
	for _, p := range []int64{permConsistentRead, permWrite, permWriteUnchanged, permResize} {
		check = append(check, lockUnshareBase+p)
		take = append(take, lockHoldBase+p)
	}
	check = append(check, lockHoldBase+permWrite, lockHoldBase+permResize)
	take = append(take, lockUnshareBase+permWrite, lockUnshareBase+permResize)
	return takeLocks(f, check, take)
}

// takeLocks fails if another open file holds any of the bytes in check,
// then takes those in take.
func takeLocks(f *os.File, check, take []int64) error {
	for _, b := range check {
		lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart, Start: b, Len: 1}
		if err := syscall.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
			if errors.Is(err, syscall.EINVAL) {
				return nil // no OFD locks here (old kernel or file system): QEMU skips locking too
			}
			return fmt.Errorf("%s: testing QEMU's lock byte %d: %w", f.Name(), b, err)
		}
		if lk.Type != syscall.F_UNLCK {
			return fmt.Errorf("%s: %w: %s", f.Name(), ErrLocked, lockMeaning(b))
		}
	}
	for _, b := range take {
		lk := syscall.Flock_t{Type: syscall.F_RDLCK, Whence: io.SeekStart, Start: b, Len: 1}
		if err := syscall.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
			if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
				return fmt.Errorf("%s: %w: %s", f.Name(), ErrLocked, lockMeaning(b))
			}
			return fmt.Errorf("%s: taking QEMU's lock byte %d: %w", f.Name(), b, err)
		}
	}
	return nil
}

func lockMeaning(b int64) string {
	switch b {
	case lockHoldBase + permWrite:
		return "another process (a running VM, qemu-io, qemu-img) has it open for writing"
	case lockHoldBase + permResize:
		return "another process may resize it"
	case lockUnshareBase + permConsistentRead:
		return "another process forbids consistent reads of it"
	case lockUnshareBase + permWrite, lockUnshareBase + permWriteUnchanged:
		return "another process (qcowmount, qemu-img, a VM reading it) forbids writing it"
	case lockUnshareBase + permResize:
		return "another process forbids resizing it"
	}
	return fmt.Sprintf("QEMU lock byte %d is held", b)
}
