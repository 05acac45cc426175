package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// maxChainDepth bounds backing chains; QEMU images rarely have more than a
// handful of layers, and a hostile image must not make us open thousands.
const maxChainDepth = 64

type fileID struct{ dev, ino uint64 }

// remember records f as part of the chain and fails if it already is: a
// backing chain that loops back on itself.
func (c *chain) remember(f *os.File, path string) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	id := fileID{uint64(sys.Dev), sys.Ino}
	if prev, ok := c.seen[id]; ok {
		return fmt.Errorf("backing chain loops: %s is %s again", path, prev)
	}
	c.seen[id] = path
	return nil
}

// openImageFile opens an image file read-only: the top image as the user
// named it, a backing or data file as the path policy allows. It checks
// that the file is one we may read as an image (a regular file, or a block
// device where allowed) and takes QEMU's read locks on it.
func (c *chain) openImageFile(path string, top bool) (*os.File, error) {
	var f *os.File
	var err error
	if top {
		f, err = os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	} else {
		f, err = c.paths.open(path)
	}
	if err != nil {
		return nil, err
	}
	if err := c.checkImageFile(f, top || c.opts.AllowDevices); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (c *chain) checkImageFile(f *os.File, allowDevices bool) error {
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
	return lockFile(f, c.opts.ForceShare)
}

// resolveReference turns a backing or data file name found in the image at
// from into a path, refusing what QEMU would open as a protocol (json:,
// nbd:, URLs). Where the path may lead is the path policy's to check, when
// the file is opened.
func resolveReference(from, name, what string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%s: empty %s name", from, what)
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%s: %s name %q contains a NUL byte: %w", from, what, name, ErrUnsafePath)
	}
	if colon := strings.IndexByte(name, ':'); colon >= 0 && !strings.Contains(name[:colon], "/") {
		if !strings.HasPrefix(name, "file:") {
			return "", fmt.Errorf("%s: %s name %q is not a plain path (protocol %q): %w", from, what, name, name[:colon], ErrUnsafePath)
		}
		name = strings.TrimPrefix(name, "file:")
	}
	p := name
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(from), p)
	}
	return p, nil
}

// openDependencies opens the external data file and the backing chain of
// img. On error it closes what it opened.
func (c *chain) openDependencies(img *Image, depth int) (err error) {
	defer func() {
		if err != nil {
			if img.backing != nil {
				img.backing.Close()
				img.backing = nil
			}
			if img.data != img.file {
				img.data.Close()
				img.data = img.file
			}
		}
	}()
	if img.hdr.IncompatibleFeatures&IncompatExternalData != 0 {
		p, err := resolveReference(img.path, img.ext.dataFile, "data file")
		if err != nil {
			return err
		}
		f, err := c.openImageFile(p, false)
		if err != nil {
			return fmt.Errorf("%s: external data file %q: %w", img.path, img.ext.dataFile, err)
		}
		// With data_file_raw the data file is a raw image of the disk, but
		// QEMU still reads through the L2 table, which stays valid: a zero
		// or unallocated entry reads as such, whatever the data file holds.
		img.data = f
	}
	if img.backingName == "" || c.opts.NoBacking {
		return nil
	}
	if depth+1 >= maxChainDepth {
		return fmt.Errorf("%s: backing chain is deeper than %d images", img.path, maxChainDepth)
	}
	p, err := resolveReference(img.path, img.backingName, "backing file")
	if err != nil {
		return err
	}
	img.backing, err = c.openBacking(p, img.backingName, img.backingFmt, depth+1)
	if err != nil {
		return fmt.Errorf("%s: backing file %q: %w", img.path, img.backingName, err)
	}
	return nil
}

// openBacking opens a backing image in the named format, or the format its
// contents show when the referring image names none (qcow2 magic: qcow2;
// anything else: raw).
func (c *chain) openBacking(path, name, format string, depth int) (Disk, error) {
	f, err := c.openImageFile(path, false)
	if err != nil {
		return nil, err
	}
	if format == "" {
		format = probeFormat(f)
	}
	var d Disk
	switch format {
	case "qcow2", "qcow":
		d, err = c.openQcow2(f, path, name, depth, "")
	case "raw":
		if err = c.remember(f, path); err == nil {
			d, err = newRawDisk(f)
		}
	default:
		err = &UnsupportedError{Feature: fmt.Sprintf("backing file format %q", format)}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func probeFormat(f *os.File) string {
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err == nil && binary.BigEndian.Uint32(magic[:]) == Magic {
		return "qcow2"
	}
	return "raw"
}

// rawDisk is a raw image used as a backing file.
type rawDisk struct {
	f    *os.File
	size int64
}

func newRawDisk(f *os.File) (*rawDisk, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	return &rawDisk{f: f, size: size}, nil
}

func (r *rawDisk) Size() int64  { return r.size }
func (r *rawDisk) Close() error { return r.f.Close() }

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
