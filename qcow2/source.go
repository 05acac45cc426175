package qcow2

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// File is one file of a chain as the reader sees it: bytes at offsets and
// a name for messages. *os.File is one; anything that reads at offsets
// can be, through New.
type File interface {
	io.ReaderAt
	Name() string
}

// Resolver opens the backing and external data files that images name.
// Open uses one for local files (the path rules, QEMU's locks, loops);
// a caller of New passes its own, for images from elsewhere.
type Resolver interface {
	// Resolve opens the file that name refers to, as the image from (a
	// name Resolve returned, or the one given to New) records it; what
	// is "backing file" or "data file". It returns the file, its size,
	// and the name it goes by in the chain. The chain closes the file
	// if it is an io.Closer.
	Resolve(from, name, what string) (f File, size int64, resolved string, err error)
}

// namedReader gives a caller's io.ReaderAt a name.
type namedReader struct {
	io.ReaderAt
	name string
}

func (n namedReader) Name() string { return n.name }

// closeFile closes f if it can be closed.
func closeFile(f File) error {
	if c, ok := f.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// rawDisk is a raw image used as a backing file.
type rawDisk struct {
	f    File
	size int64
}

func (r *rawDisk) Size() int64  { return r.size }
func (r *rawDisk) Close() error { return closeFile(r.f) }

// ReadAt reads from the raw file; a read that comes up short inside the size
// it had when opened means the file shrank under us, and is an error.
func (r *rawDisk) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), r.size-off)
	n, err := r.f.ReadAt(p[:want], off)
	if int64(n) < want {
		if err == nil || errors.Is(err, io.EOF) {
			err = fmt.Errorf("%s: file ends at %d, inside the disk (size %d when opened)", r.f.Name(), off+int64(n), r.size)
		}
		return n, err
	}
	if want < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// osFile returns the local file under f, for what only a local file can
// do (splice, SEEK_DATA, st_blocks).
func osFile(f File) (*os.File, bool) {
	of, ok := f.(*os.File)
	return of, ok
}
