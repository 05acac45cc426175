package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/qcowmount/qcowmount/qcow2/stream"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// exportOptions are export's flags.
type exportOptions struct {
	image       imageOptions
	part        partOptions
	progress    progressOptions
	keepPartial bool
}

func exportCommand() *cli.Command {
	o := exportOptions{image: defaultImageOptions()}
	return &cli.Command{
		Name:      "export",
		Usage:     "write the guest disk (or a partition or volume) as raw bytes to a file, a block device or - (stdout)",
		ArgsUsage: "IMAGE OUT",
		Flags: slices.Concat(o.image.flags(), o.part.flags(), o.progress.flags(), []cli.Flag{
			&cli.BoolFlag{Name: "keep-partial", Destination: &o.keepPartial, Usage: "when interrupted or failing, keep what was written to OUT (by default a file made here is removed, one that existed left empty)"},
		}),
		Action: action("export", func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			return runExport(ctx, o, args, stdout, stderr)
		}),
	}
}

// runExport writes the guest disk of the image args[0] names (or a
// partition or volume of it) to args[1]: a file, a block device, or "-"
// for stdout. Interrupted (ctx), it cleans up and exits 130.
func runExport(ctx context.Context, o exportOptions, args []string, stdout, stderr io.Writer) error {
	if len(args) != 2 {
		return usageError{fmt.Errorf("export takes IMAGE and OUT, got %d arguments (see qcowmount export --help)", len(args))}
	}
	out := args[1]
	if f, ok := stdout.(*os.File); out == "-" && ok && term.IsTerminal(int(f.Fd())) {
		return usageError{fmt.Errorf("export to -: standard output is a terminal; redirect it, or give a file")}
	}
	img, err := openForReading(ctx, o.image, args[0], stderr)
	if err != nil {
		return err
	}
	defer img.Close()
	p, err := selectPart(o.part, img.Image)
	if err != nil {
		return err
	}
	if err := notInChain(img, out); err != nil {
		return usageError{err}
	}
	// Decrypted bytes go to a new file only its owner can read.
	dst, err := openDestination(out, stdout, p.disk.Size(), img.Encrypted())
	if err != nil {
		return err
	}
	bar := newProgress(o.progress, stderr, p.disk.Size(), "export "+p.name)
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
	err = fmt.Errorf("export to %s: %w%s", out, err, dst.abandon(o.keepPartial))
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

// destination is where export writes: a file, written in place with its
// holes seeked over, or a stream (stdout, a device) that gets every byte
// in order.
type destination struct {
	w       io.Writer // every byte goes here: f, or stdout
	f       *os.File  // nil for stdout
	out     string    // the name the user gave
	file    bool      // a regular file: sparse, truncated to size at the end
	created string    // the file export made, removed when it fails; "" for one that existed
	size    int64
	written int64 // for a stream
	reached int64 // for a file: the end of the pieces written
}

// openDestination opens OUT as qemu-img convert does: a file that exists
// is written in place, through a symbolic link if OUT is one, keeping its
// mode, owner and links; a new one is made with the usual mode, or 0600
// when it receives decrypted bytes (private).
func openDestination(out string, stdout io.Writer, size int64, private bool) (*destination, error) {
	if out == "-" {
		return &destination{w: stdout, out: "standard output", size: size}, nil
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
				return nil, fmt.Errorf("%s holds %d bytes, less than the %d to export", out, end, size)
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				f.Close()
				return nil, err
			}
		}
		return &destination{w: f, f: f, out: out, size: size}, nil
	case err == nil && !st.Mode().IsRegular():
		return nil, usageError{fmt.Errorf("%s is a %s: export writes to files, block devices and -", out, fileKind(st.Mode()))}
	case err == nil:
		f, err := os.OpenFile(out, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return nil, err
		}
		return &destination{w: f, f: f, out: out, file: true, size: size}, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	// A new file: at OUT, or where a dangling symbolic link OUT points.
	path, err := linkTarget(out)
	if err != nil {
		return nil, err
	}
	mode := os.FileMode(0o666) // less the umask, as every new file
	if private {
		mode = 0o600
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return nil, err
	}
	return &destination{w: f, f: f, out: out, file: true, created: path, size: size}, nil
}

// linkTarget is where a new file named path lands: path, or, if path is
// a symbolic link to nothing, the file it names (links followed).
func linkTarget(path string) (string, error) {
	for range 40 { // the kernel's limit on links in a row
		st, err := os.Lstat(path)
		if err != nil || st.Mode()&os.ModeSymlink == 0 {
			return path, nil
		}
		to, err := os.Readlink(path)
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(to) {
			to = filepath.Join(filepath.Dir(path), to)
		}
		path = to
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", path)
}

// zeroBlock is the granularity at which data that is all zeros becomes a
// hole in a file, as qemu-img convert's default (-S 4k).
const zeroBlock = 4096

func (d *destination) write(ctx context.Context, p stream.Piece) error {
	if !d.file {
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
	d.reached = p.Off + p.Len
	return nil
}

// Write sends b to a stream destination, counting what went.
func (d *destination) Write(b []byte) (int, error) {
	n, err := d.w.Write(b)
	d.written += int64(n)
	return n, err
}

// finish completes the output: a file gets its size.
func (d *destination) finish() error {
	var err error
	switch {
	case d.file:
		err = d.f.Truncate(d.size)
	case d.f == nil:
		return nil
	default:
		// A device is done when its bytes are on it, not in the cache.
		err = d.f.Sync()
		if errors.Is(err, syscall.EINVAL) {
			err = nil // character devices (/dev/null) cannot sync
		}
	}
	if cerr := d.f.Close(); err == nil {
		err = cerr
	}
	if err != nil && d.file {
		d.abandon(false)
	}
	return err
}

// abandon ends a failed export and says what it left behind: a file it
// made is removed, one that existed left empty (its old bytes were gone
// from the start), unless keep.
func (d *destination) abandon(keep bool) string {
	if !d.file {
		if d.f != nil {
			d.f.Close()
		}
		return fmt.Sprintf(" (%d bytes of %d written to %s)", d.written, d.size, d.out)
	}
	defer d.f.Close()
	switch {
	case keep:
		d.f.Truncate(d.reached) // as far as it got, holes included
		return fmt.Sprintf(" (the partial output, %d bytes of %d, is kept in %s)", d.reached, d.size, d.out)
	case d.created != "":
		os.Remove(d.created)
		return " (removed the partial output; --keep-partial keeps it)"
	}
	d.f.Truncate(0)
	return fmt.Sprintf(" (%s is left empty; --keep-partial keeps what was written)", d.out)
}
