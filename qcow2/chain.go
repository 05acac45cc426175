package qcow2

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strings"
)

// maxChainDepth bounds backing chains; QEMU images rarely have more than a
// handful of layers, and a hostile image must not make us open thousands.
const maxChainDepth = 64

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
			if img.external {
				closeFile(img.data)
				img.data, img.external = img.file, false
			}
		}
	}()
	if img.hdr.IncompatibleFeatures&IncompatExternalData != 0 {
		f, _, _, err := c.resolve(img.path, img.ext.dataFile, "data file")
		if err != nil {
			err = fmt.Errorf("%s: external data file %q: %w", img.path, img.ext.dataFile, err)
			if !c.opts.AllowMissing {
				return err
			}
			f, img.dataErr = missingFile{img.ext.dataFile, err}, err
		}
		// With data_file_raw the data file is a raw image of the disk, but
		// QEMU still reads through the L2 table, which stays valid: a zero
		// or unallocated entry reads as such, whatever the data file holds.
		img.data, img.external = f, true
	}
	if img.backingName == "" || c.opts.NoBacking {
		return nil
	}
	if depth+1 >= maxChainDepth {
		return fmt.Errorf("%s: backing chain is deeper than %d images", img.path, maxChainDepth)
	}
	f, size, path, err := c.resolve(img.path, img.backingName, "backing file")
	if err == nil {
		img.backingPath = path
		img.backing, err = c.openBacking(f, size, path, img.backingName, img.backingFmt, depth+1)
	}
	if err != nil {
		err = fmt.Errorf("%s: backing file %q: %w", img.path, img.backingName, err)
		if !c.opts.AllowMissing {
			return err
		}
		img.backing, img.backingErr = missingDisk{img.size, err}, err
	}
	return nil
}

// resolve opens a file an image names, through the chain's Resolver.
func (c *chain) resolve(from, name, what string) (File, int64, string, error) {
	if c.resolver == nil {
		return nil, 0, "", fmt.Errorf("the image names a %s, and nothing was given to open it with (Options.Resolver)", what)
	}
	return c.resolver.Resolve(from, name, what)
}

// openBacking reads a backing image in the named format, or the format its
// contents show when the referring image names none (qcow2 magic: qcow2;
// anything else: raw). On error it closes f.
func (c *chain) openBacking(f File, size int64, path, name, format string, depth int) (guestDisk, error) {
	if format == "" {
		format = probeFormat(f)
	}
	var d guestDisk
	var err error
	switch format {
	case "qcow2", "qcow":
		var img *Image
		if img, err = c.openImage(f, size, path, name, depth, ""); err == nil {
			img.ownsFile = true
			d = img
		}
	case "raw":
		d = &rawDisk{f: f, size: size}
	default:
		err = &UnsupportedError{Feature: fmt.Sprintf("backing file format %q", format)}
	}
	if err != nil {
		closeFile(f)
		return nil, err
	}
	return d, nil
}

func probeFormat(f File) string {
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err == nil && binary.BigEndian.Uint32(magic[:]) == Magic {
		return "qcow2"
	}
	return "raw"
}

// missingDisk stands for a backing file that did not open: every read of
// it fails with the reason, and it holds data as far as anyone knows.
type missingDisk struct {
	size int64
	err  error
}

func (m missingDisk) ReadAt([]byte, int64) (int, error) { return 0, m.err }
func (m missingDisk) Size() int64                       { return m.size }
func (m missingDisk) Close() error                      { return nil }

// missingFile stands for a data file that did not open: every read of it
// fails with the reason.
type missingFile struct {
	name string
	err  error
}

func (m missingFile) ReadAt([]byte, int64) (int, error) { return 0, m.err }
func (m missingFile) Name() string                      { return m.name }
