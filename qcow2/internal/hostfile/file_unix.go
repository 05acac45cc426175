//go:build unix

package hostfile

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

type fileID struct{ dev, ino uint64 }

// identify names the file st describes, whatever path led to it.
func identify(st os.FileInfo) (fileID, bool) {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{uint64(sys.Dev), uint64(sys.Ino)}, true
}

// Allocated is what f takes on disk, as qemu-img's actual-size.
func Allocated(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Blocks * 512, nil
	}
	return st.Size(), nil
}

// Extent asks the file system whether f holds data or a hole at off, and
// for how many bytes (at most limit). Bytes past the end of the file are
// no hole: they count as data, which reading them says is not there.
func Extent(f *os.File, off, limit int64) (data bool, n int64, err error) {
	fd := int(f.Fd())
	next, err := unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		// No data from off to the end of the file, or off is past it.
		st, err := f.Stat()
		if err != nil {
			return false, 0, fmt.Errorf("%s: finding data at %d: %w", f.Name(), off, err)
		}
		if off >= st.Size() {
			return true, limit, nil
		}
		return false, min(limit, st.Size()-off), nil
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
		return true, limit, nil // a file system without holes
	case err != nil:
		return false, 0, fmt.Errorf("%s: finding data at %d: %w", f.Name(), off, err)
	case next > off:
		return false, min(limit, next-off), nil
	}
	end, err := unix.Seek(fd, off, unix.SEEK_HOLE)
	if err != nil {
		return false, 0, fmt.Errorf("%s: finding a hole at %d: %w", f.Name(), off, err)
	}
	return true, min(limit, end-off), nil
}
