//go:build !unix

package hostfile

import "os"

// fileID is nothing where files have no device and inode numbers: a chain
// that loops then ends at the chain's depth limit instead.
type fileID struct{}

func identify(os.FileInfo) (fileID, bool) { return fileID{}, false }

// Allocated is what f takes on disk; here, its size.
func Allocated(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Extent reports data for every byte: the system cannot tell holes.
func Extent(f *os.File, off, limit int64) (data bool, n int64, err error) {
	return true, limit, nil
}
