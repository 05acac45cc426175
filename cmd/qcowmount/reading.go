package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/guest"
	"github.com/qcowmount/qcowmount/qcow2/stream"
	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// What export and hash share: they open an image as mount does, read the
// guest disk (or one partition or volume of it) from start to end, and
// show their progress on a terminal.

// openForReading opens the image argument as the image flags say; the
// passphrase may come from a prompt, as for mount. Remote fetches end
// with ctx; the image's warnings go to stderr.
func openForReading(ctx context.Context, o imageOptions, arg string, stderr io.Writer) (*openedImage, error) {
	opts, err := o.qcow2Options()
	if err != nil {
		return nil, err
	}
	keys, err := newLocalKeys(o, true)
	if err != nil {
		return nil, err
	}
	opts.Passphrase = keys.passphrase
	img, err := openImage(ctx, o, arg, opts, commandLogger(o.debug, stderr))
	if err != nil {
		return nil, imageError{keys.explain(err)}
	}
	for _, w := range img.Warnings() {
		fmt.Fprintln(stderr, "qcowmount: warning:", printable(w))
	}
	return img, nil
}

// part is what a command reads: the guest disk, a partition or a volume,
// named as its file in a mount.
type part struct {
	name string
	disk stream.Disk
}

// selectPart is the disk, or the partition or volume o names.
func selectPart(o partOptions, img *qcow2.Image) (part, error) {
	if !o.partitionSet && o.volume == "" {
		return part{"disk.raw", img}, nil
	}
	if o.partitionSet && o.volume != "" {
		return part{}, usageError{fmt.Errorf("--partition and --volume: give one of them")}
	}
	layout, err := guest.Scan(img)
	if err != nil {
		return part{}, imageError{fmt.Errorf("reading the guest's partition table: %w", err)}
	}
	if o.partitionSet {
		var numbers []string
		for _, p := range layout.Partitions {
			if p.Number == o.partition {
				return part{p.FileName(), p.View(img)}, nil
			}
			numbers = append(numbers, fmt.Sprint(p.Number))
		}
		return part{}, usageError{fmt.Errorf("--partition %d: no such partition (the guest disk has: %s)", o.partition, listOrNone(numbers))}
	}
	v, err := findVolume(layout.Volumes, o.volume)
	if err != nil {
		return part{}, err
	}
	return part{v.FileName(), v.View(img)}, nil
}

// findVolume is the readable volume that name names: VG/LV, VG-LV as its
// file in a mount, or LV alone where no other readable volume has that
// name. A volume left out (striped, or clashing with another) is named
// only to say why it cannot be read.
func findVolume(volumes []guest.Volume, name string) (guest.Volume, error) {
	var names, matches []string
	var readable, refused []guest.Volume
	for _, v := range volumes {
		names = append(names, v.VG+"/"+v.Name)
		if name == v.VG+"/"+v.Name || name+".raw" == v.FileName() || name == v.Name {
			if v.Unreadable == "" {
				readable = append(readable, v)
				matches = append(matches, v.VG+"/"+v.Name)
			} else {
				refused = append(refused, v)
			}
		}
	}
	switch {
	case len(readable) == 1:
		return readable[0], nil
	case len(readable) > 1:
		return guest.Volume{}, usageError{fmt.Errorf("--volume %s: several volumes have that name (%s): give VG/LV", name, strings.Join(matches, ", "))}
	case len(refused) > 0:
		v := refused[0]
		return guest.Volume{}, imageError{fmt.Errorf("volume %s/%s cannot be read: %s", v.VG, v.Name, v.Unreadable)}
	}
	return guest.Volume{}, usageError{fmt.Errorf("--volume %s: no such volume (the guest disk has: %s)", name, listOrNone(names))}
}

// progress is a bar on standard error, or nothing.
type progress struct{ bar *progressbar.ProgressBar }

// newProgress is a bar on stderr, if o and stderr (a terminal) say so.
func newProgress(o progressOptions, stderr io.Writer, total int64, what string) *progress {
	f, isFile := stderr.(*os.File)
	show := isFile && term.IsTerminal(int(f.Fd()))
	if o.force {
		show = true
	}
	if o.never || !show {
		return &progress{}
	}
	return &progress{progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(stderr),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionFullWidth(),
		progressbar.OptionClearOnFinish(),
	)}
}

func (p *progress) add(n int64) {
	if p.bar != nil {
		p.bar.Add64(n)
	}
}

func (p *progress) done() {
	if p.bar != nil {
		p.bar.Finish()
	}
}

// zeros is what holes are written and hashed from.
var zeros = make([]byte, 1<<20)

// streamOptions are how export and hash read img's disk: chunks of 1 MiB,
// or of the chain's largest cluster, so that no two reads decompress one.
func streamOptions(img *qcow2.Image) stream.Options {
	return stream.Options{Chunk: int(max(1<<20, img.LargestCluster()))}
}

func isZero(b []byte) bool { return bytes.Equal(b, zeros[:len(b)]) }

// writeZeros writes n zero bytes to w, stopping early when ctx ends: n
// can be the size of a whole empty disk, minutes of hashing.
func writeZeros(ctx context.Context, w io.Writer, n int64) error {
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		m := min(n, int64(len(zeros)))
		if _, err := w.Write(zeros[:m]); err != nil {
			return err
		}
		n -= m
	}
	return nil
}

// interruptible is a context that ends at the first Ctrl-C or SIGTERM: a
// command then stops what it reads, remote fetches included, and cleans
// up. A second signal ends the process at once, as the signal does.
func interruptible() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // the signals' default action again
	}()
	return ctx, stop
}

// exitInterrupted is the shell's code for a command ended by SIGINT.
const exitInterrupted = 130

// whenInterrupted is err, or, once ctx was interrupted, the error that
// says so with exit code 130: what failed then failed because of it.
func whenInterrupted(ctx context.Context, command string, err error) error {
	var x exitError
	if errors.As(err, &x) && x.code == exitInterrupted {
		return err // says already what the interrupt left behind
	}
	if err != nil && ctx.Err() != nil {
		return exitError{exitInterrupted, fmt.Errorf("%s: interrupted", command)}
	}
	return err
}

// action runs a command's function with the app's streams (the
// process's, or a test's), in a context that ends at the first Ctrl-C or
// SIGTERM (interruptible); what failed once it ended exits 130.
func action(name string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		ctx, stop := interruptible()
		defer stop()
		return whenInterrupted(ctx, name, run(ctx, c.Args().Slice(), c.App.Writer, c.App.ErrWriter))
	}
}
