// Package hostfile opens the files of an image chain on this machine as
// a stranger's image may have them opened: the top image as the user
// named it; backing and data files only beneath the allowed directories
// (the path policy), and only if they are regular files (block devices on request)
// off the host's pseudo file systems, with QEMU's read locks taken. It
// knows nothing of qcow2; what is Linux-only (OFD locks, statfs magic)
// has a portable fallback on other systems.
package hostfile

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrUnsafePath is wrapped by errors about files that the path policy
// refuses.
var ErrUnsafePath = errors.New("refused by path policy")

// ErrOutside is wrapped by the refusal of a backing or data file that
// lies outside the directories the policy allows (Options.BackingDir and
// AllowAnyPath widen them); it wraps ErrUnsafePath.
var ErrOutside = fmt.Errorf("%w: outside the allowed directories", ErrUnsafePath)

// ErrDevice is wrapped by the refusal of a backing or data file that is
// a block device (Options.AllowDevices allows them).
var ErrDevice = errors.New("a block device, refused")

// ErrLocked is wrapped by the error for an image that another process
// holds in a way that conflicts with reading it consistently.
var ErrLocked = errors.New("image is in use by another process")

// Options say what the files of a chain may be.
type Options struct {
	// AllowAnyPath lifts the confinement of backing and data files.
	AllowAnyPath bool
	// BackingDir is a directory, besides the top image's, that backing
	// and data files may lie in.
	BackingDir string
	// AllowDevices lets backing and data files be block devices.
	AllowDevices bool
	// ForceShare takes only QEMU's "consistent read" lock, as its
	// --force-share does.
	ForceShare bool
}

// Files opens the files of one chain and remembers them, so that a chain
// that loops is refused.
type Files struct {
	opts   Options
	policy *pathPolicy // while opening: where backing and data files may lie
	seen   map[fileID]string
}

// New prepares to open the chain of the image at topImage (an absolute
// path). Close lets go of the policy's directories.
func New(topImage string, opts Options) (*Files, error) {
	p, err := newPolicy(topImage, opts)
	if err != nil {
		return nil, err
	}
	return &Files{opts: opts, policy: p, seen: map[fileID]string{}}, nil
}

// Close lets go of the policy's directories: they are needed only while
// the chain is being opened.
func (l *Files) Close() { l.policy.close() }

// role is what a file is to its chain: how it may be opened and sized.
type role int

const (
	top     role = iota // as the user named it
	backing             // beneath the policy's roots, once per chain
	data                // beneath the policy's roots
)

// OpenTop opens the image the user named, and returns its size.
func (l *Files) OpenTop(path string) (*os.File, int64, error) { return l.open(path, top) }

// OpenBacking opens a backing file an image names, as the policy allows,
// and returns its size; opening one already in the chain is an error.
func (l *Files) OpenBacking(path string) (*os.File, int64, error) { return l.open(path, backing) }

// OpenData opens an external data file an image names, as the policy
// allows, and returns its size.
func (l *Files) OpenData(path string) (*os.File, int64, error) { return l.open(path, data) }

// open opens an image file read-only, as its role allows, checks that it
// is one we may read as an image (a regular file, or a block device where
// allowed), takes QEMU's read locks on it and returns its size.
func (l *Files) open(path string, r role) (*os.File, int64, error) {
	var f *os.File
	var err error
	if r == top {
		f, err = os.OpenFile(path, openFlags, 0)
	} else {
		f, err = l.policy.open(path)
	}
	if err != nil {
		return nil, 0, err
	}
	var size int64
	err = check(f, r == top || l.opts.AllowDevices)
	if err == nil {
		err = lockFile(f, l.opts.ForceShare)
	}
	if err == nil && r == data {
		size, err = fileSize(f)
	} else if err == nil {
		size, err = l.remember(f, path)
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, size, nil
}

// remember records f as part of the chain, and fails if it already is: a
// backing chain that loops back on itself. It returns the file's size.
func (l *Files) remember(f *os.File, path string) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if id, ok := identify(st); ok {
		if prev, ok := l.seen[id]; ok {
			return 0, fmt.Errorf("backing chain loops: %s is %s again", path, prev)
		}
		l.seen[id] = path
	}
	return fileSize(f)
}

// fileSize is the size of a regular file or a block device.
func fileSize(f *os.File) (int64, error) {
	return f.Seek(0, io.SeekEnd)
}

func check(f *os.File, allowDevices bool) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	switch mode := st.Mode(); {
	case mode.IsRegular():
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0 && allowDevices:
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0:
		return fmt.Errorf("%s is %w", f.Name(), ErrDevice)
	case mode.IsDir():
		return fmt.Errorf("%s is a directory, not an image file", f.Name())
	default:
		return fmt.Errorf("%s is not a regular file (%s)", f.Name(), mode.Type())
	}
	return checkFileSystem(f)
}
