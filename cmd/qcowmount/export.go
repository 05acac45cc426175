package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/qcowmount/qcowmount/qcow2/stream"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write the guest disk (or a partition or volume) as raw bytes to a file, a block device or - (stdout)",
		ArgsUsage: "IMAGE OUT",
		Flags: append(append(append(imageFlags(), partFlags()...), progressFlags()...),
			&cli.BoolFlag{Name: "keep-partial", Usage: "when interrupted or failing, keep what was written to OUT (by default a file made here is removed)"},
		),
		Action: exportAction,
	}
}

func exportAction(c *cli.Context) error {
	if c.NArg() != 2 {
		return usageError{fmt.Errorf("export takes IMAGE and OUT, got %d arguments (see qcowmount export --help)", c.NArg())}
	}
	out := c.Args().Get(1)
	if out == "-" && term.IsTerminal(int(os.Stdout.Fd())) {
		return usageError{fmt.Errorf("export to -: standard output is a terminal; redirect it, or give a file")}
	}
	img, err := openForReading(c, c.Args().First())
	if err != nil {
		return err
	}
	defer img.Close()
	p, err := selectPart(c, img.Image)
	if err != nil {
		return err
	}
	if err := notInChain(img, out); err != nil {
		return usageError{err}
	}
	// Signals are caught before a partial file exists, so that one
	// arriving at any moment finds it to remove.
	ctx, stop := interruptible()
	defer stop()
	dst, err := openDestination(out, p.disk.Size())
	if err != nil {
		return err
	}
	bar := newProgress(c, p.disk.Size(), "export "+p.name)
	var writeErr error
	err = stream.Run(ctx, p.disk, streamOptions(img.Image), func(pc stream.Piece) error {
		if writeErr = dst.write(ctx, pc); writeErr != nil {
			return writeErr
		}
		bar.add(pc.Len)
		return nil
	})
	if err == nil {
		bar.done()
		if err := dst.finish(); err != nil {
			return fmt.Errorf("export to %s: %w", out, err)
		}
		return nil
	}
	interrupted := ctx.Err() != nil
	if interrupted {
		err = errors.New("interrupted")
	}
	err = fmt.Errorf("export to %s: %w%s", out, err, dst.abandon(c.Bool("keep-partial")))
	switch {
	case interrupted:
		return exitError{exitInterrupted, err}
	case writeErr == nil:
		return imageError{err} // the image could not be read
	}
	return err
}

// notInChain refuses to write over a file the image reads.
func notInChain(img *openedImage, out string) error {
	st, err := os.Stat(out)
	if err != nil {
		return nil
	}
	for _, l := range img.Chain() {
		in, err := l.Info()
		if err != nil {
			continue
		}
		files := []string{in.Filename, in.FullBackingFilename}
		if fs := in.FormatSpecific; fs != nil && fs.Data != nil && fs.Data.DataFile != "" {
			files = append(files, filepath.Join(filepath.Dir(in.Filename), fs.Data.DataFile))
		}
		for _, f := range files {
			if fs, err := os.Stat(f); err == nil && f != "" && os.SameFile(st, fs) {
				return fmt.Errorf("export: OUT %s is %s, a file the image reads: refusing to overwrite it", out, f)
			}
		}
	}
	return nil
}

// destination is where export writes: a new file (holes seeked over,
// renamed into place at the end) or a stream (stdout, a device) that
// gets every byte in order.
type destination struct {
	f       *os.File
	out     string // the name the user gave
	tmp     string // for a file: the file being written, renamed to out at the end
	size    int64
	written int64 // for a stream
}

func openDestination(out string, size int64) (*destination, error) {
	if out == "-" {
		return &destination{f: os.Stdout, out: "standard output", size: size}, nil
	}
	st, err := os.Stat(out)
	switch {
	case err == nil && st.Mode()&os.ModeDevice != 0:
		f, err := os.OpenFile(out, os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		if st.Mode()&os.ModeCharDevice == 0 {
			if end, err := f.Seek(0, io.SeekEnd); err == nil && end < size {
				f.Close()
				return nil, usageError{fmt.Errorf("%s holds %d bytes, less than the %d to export", out, end, size)}
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				f.Close()
				return nil, err
			}
		}
		return &destination{f: f, out: out, size: size}, nil
	case err == nil && !st.Mode().IsRegular():
		return nil, usageError{fmt.Errorf("%s is a %s: export writes to files, block devices and -", out, fileKind(st.Mode()))}
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	// A file: written beside OUT under another name, so that OUT is
	// never half written, and given the mode a new file gets.
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".partial-*")
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(os.FileMode(0o666 &^ umask())); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return &destination{f: f, out: out, tmp: f.Name(), size: size}, nil
}

// zeroBlock is the granularity at which data that is all zeros becomes a
// hole in a file, as qemu-img convert's default (-S 4k).
const zeroBlock = 4096

func (d *destination) write(ctx context.Context, p stream.Piece) error {
	if d.tmp == "" {
		if p.Data == nil {
			return writeZeros(ctx, d, p.Len)
		}
		_, err := d.Write(p.Data)
		return err
	}
	// A file: holes stay holes, and so do zero blocks in data.
	for b, off := p.Data, p.Off; len(b) > 0; {
		n := min(len(b), zeroBlock)
		if isZero(b[:n]) {
			b, off = b[n:], off+int64(n)
			continue
		}
		for n < len(b) && !isZero(b[n:min(len(b), n+zeroBlock)]) {
			n = min(len(b), n+zeroBlock)
		}
		if _, err := d.f.WriteAt(b[:n], off); err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// Write sends b to a stream destination, counting what went.
func (d *destination) Write(b []byte) (int, error) {
	n, err := d.f.Write(b)
	d.written += int64(n)
	return n, err
}

// finish completes the output: a file gets its size and its name.
func (d *destination) finish() error {
	if d.tmp == "" {
		if d.f == os.Stdout {
			return nil
		}
		// A device is done when its bytes are on it, not in the cache.
		err := d.f.Sync()
		if errors.Is(err, syscall.EINVAL) {
			err = nil // character devices (/dev/null) cannot sync
		}
		if cerr := d.f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	if err := d.f.Truncate(d.size); err != nil {
		d.abandon(false)
		return err
	}
	if err := d.f.Close(); err != nil {
		d.abandon(false)
		return err
	}
	if err := os.Rename(d.tmp, d.out); err != nil {
		os.Remove(d.tmp)
		return err
	}
	return nil
}

// abandon ends a failed export, keeping the partial file under OUT's name
// when asked to; it says what was left behind.
func (d *destination) abandon(keep bool) string {
	if d.tmp == "" {
		if d.f != os.Stdout {
			d.f.Close()
		}
		return fmt.Sprintf(" (%d bytes of %d written to %s)", d.written, d.size, d.out)
	}
	d.f.Close()
	if keep {
		if err := os.Rename(d.tmp, d.out); err == nil {
			return fmt.Sprintf(" (the partial output is kept as %s)", d.out)
		}
		return fmt.Sprintf(" (the partial output is kept as %s)", d.tmp)
	}
	os.Remove(d.tmp)
	return " (removed the partial output; --keep-partial keeps it)"
}
