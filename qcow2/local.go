package qcow2

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// localFiles is the Resolver of Open: the files of a chain on this
// machine, opened as the path rules allow, checked (regular files, block
// devices where allowed, nothing on a pseudo file system), locked as QEMU
// locks them, and remembered, so that a chain that loops is refused.
type localFiles struct {
	opts  Options
	paths *pathPolicy // while opening: where backing and data files may lie
	seen  map[fileID]string
}

type fileID struct{ dev, ino uint64 }

func newLocalFiles(topImage string, opts Options) (*localFiles, error) {
	paths, err := newPathPolicy(topImage, opts)
	if err != nil {
		return nil, err
	}
	return &localFiles{opts: opts, paths: paths, seen: map[fileID]string{}}, nil
}

// close lets go of the path rules' roots: they are needed only while the
// chain is being opened.
func (l *localFiles) close() { l.paths.close() }

// openTop opens the image the user named.
func (l *localFiles) openTop(path string) (*os.File, int64, error) {
	f, err := l.open(path, true)
	if err != nil {
		return nil, 0, err
	}
	size, err := l.remember(f, path)
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, size, nil
}

// Resolve opens a backing or data file that an image names.
func (l *localFiles) Resolve(from, name, what string) (File, int64, string, error) {
	p, err := resolveReference(from, name, what)
	if err != nil {
		return nil, 0, "", err
	}
	f, err := l.open(p, false)
	if err != nil {
		return nil, 0, "", err
	}
	var size int64
	if what == "backing file" {
		size, err = l.remember(f, p)
	} else {
		size, err = fileSize(f)
	}
	if err != nil {
		f.Close()
		return nil, 0, "", err
	}
	return f, size, p, nil
}

// remember records f as part of the chain, and fails if it already is: a
// backing chain that loops back on itself. It returns the file's size.
func (l *localFiles) remember(f *os.File, path string) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		id := fileID{uint64(sys.Dev), sys.Ino}
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

// open opens an image file read-only: the top image as the user named
// it, a backing or data file as the path policy allows. It checks that the
// file is one we may read as an image (a regular file, or a block device
// where allowed) and takes QEMU's read locks on it.
func (l *localFiles) open(path string, top bool) (*os.File, error) {
	var f *os.File
	var err error
	if top {
		f, err = os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	} else {
		f, err = l.paths.open(path)
	}
	if err != nil {
		return nil, err
	}
	if err := l.check(f, top || l.opts.AllowDevices); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (l *localFiles) check(f *os.File, allowDevices bool) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	switch mode := st.Mode(); {
	case mode.IsRegular():
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0 && allowDevices:
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0:
		return fmt.Errorf("%s is a block device: refused without --allow-devices", f.Name())
	case mode.IsDir():
		return fmt.Errorf("%s is a directory, not an image file", f.Name())
	default:
		return fmt.Errorf("%s is not a regular file (%s)", f.Name(), mode.Type())
	}
	if err := checkFileSystem(f); err != nil {
		return err
	}
	return lockFile(f, l.opts.ForceShare)
}
