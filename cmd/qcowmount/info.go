package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/guest"
	"github.com/urfave/cli/v2"
)

// infoOptions are info's flags.
type infoOptions struct {
	image        imageOptions
	json         bool
	output       string // qemu-img's --output: json or human
	backingChain bool
}

func infoCommand() *cli.Command {
	o := infoOptions{image: defaultImageOptions()}
	return &cli.Command{
		Name:      "info",
		Usage:     "describe an image, its backing chain and the guest disk inside",
		ArgsUsage: "IMAGE",
		Flags: slices.Concat(o.image.flags(), []cli.Flag{
			&cli.BoolFlag{Name: "json", Destination: &o.json, Usage: "print JSON with qemu-img info's keys"},
			&cli.StringFlag{Name: "output", Destination: &o.output, Usage: "`FORMAT`: json or human, as qemu-img info --output"},
			&cli.BoolFlag{Name: "backing-chain", Destination: &o.backingChain, Usage: "with --json, print an array: the image and every backing file"},
		}),
		Action: action("info", func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			return runInfo(ctx, o, args, stdout, stderr)
		}),
	}
}

// jsonOutput reads qemu-img's --output=json|human beside --json.
func jsonOutput(json bool, output string) (bool, error) {
	switch output {
	case "":
		return json, nil
	case "human":
		return false, nil
	case "json":
		return true, nil
	}
	return false, usageError{fmt.Errorf("--output %q: json or human", output)}
}

// openForDescribing opens the image argument for info and check: without
// its passphrase (as qemu-img info; with one, info shows the guest disk
// too), and, as qemu-img info does, even when its backing or data file
// does not open (the image says why).
func openForDescribing(ctx context.Context, o imageOptions, arg string, stderr io.Writer) (*openedImage, error) {
	opts, err := o.qcow2Options()
	if err != nil {
		return nil, err
	}
	keys, err := newLocalKeys(o, false)
	if err != nil {
		return nil, err
	}
	opts.Passphrase, opts.AllowLocked, opts.AllowMissing = keys.passphrase, true, true
	img, err := openImage(ctx, o, arg, opts, commandLogger(o.debug, stderr))
	if err != nil {
		return nil, imageError{keys.explain(err)}
	}
	return img, nil
}

// runInfo describes the image args names, and its chain and guest disk,
// on stdout.
func runInfo(ctx context.Context, o infoOptions, args []string, stdout, stderr io.Writer) error {
	asJSON, err := jsonOutput(o.json, o.output)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usageError{fmt.Errorf("info takes one IMAGE, got %d arguments (see qcowmount info --help)", len(args))}
	}
	arg := args[0]
	img, err := openForDescribing(ctx, o.image, arg, stderr)
	if err != nil {
		return err
	}
	for _, err := range img.Missing() {
		fmt.Fprintln(stderr, "qcowmount: warning:", printable(err.Error()))
	}
	defer img.Close()
	out := bufio.NewWriter(stdout)
	layout, err := guest.Scan(img.Image)
	switch {
	case errors.Is(err, qcow2.ErrNoKey):
		fmt.Fprintln(stderr, "qcowmount: the guest disk is encrypted: give the passphrase (--key-file FILE or --password-stdin) to see its partitions")
		layout = nil
	case err != nil:
		fmt.Fprintln(stderr, "qcowmount: warning: reading the guest's partition table:", printable(err.Error()))
		layout = nil
	}
	// One image at a time: only one snapshot list is in memory at once.
	layers := img.Chain()
	if asJSON && !o.backingChain {
		layers = layers[:1]
	}
	for i, l := range layers {
		in, err := l.Info()
		if err != nil {
			return err
		}
		if i == 0 {
			// As qemu-img: the top image by the name it was given (a
			// URL without its query, which may be a credential).
			if !isURL(arg) {
				in.Filename = arg
			}
		}
		// The guest's layout belongs to the disk the chain makes: it
		// goes with the top image.
		g := layout
		if i > 0 {
			g = nil
		}
		switch {
		case !asJSON:
			if i > 0 {
				fmt.Fprintln(out)
			}
			writeInfo(out, in)
		case !o.backingChain:
			err = writeInfoJSON(out, in, g, "")
			fmt.Fprintln(out)
		default:
			sep := ",\n    "
			if i == 0 {
				sep = "[\n    "
			}
			fmt.Fprint(out, sep)
			err = writeInfoJSON(out, in, g, "    ")
		}
		if err != nil {
			return err
		}
	}
	if asJSON && o.backingChain {
		fmt.Fprintln(out, "\n]")
	}
	if !asJSON && layout != nil {
		fmt.Fprintln(out)
		writeLayout(out, layout)
	}
	if err := out.Flush(); err != nil {
		return err
	}
	if bytes, requests := img.fetched(); requests > 0 {
		fmt.Fprintf(stderr, "qcowmount: fetched %s in %d range requests\n", humanSize(bytes), requests)
	}
	return nil
}

// writeLayout prints what lies inside the guest disk: partitions, LVM
// volumes, file systems, and what was left out.
func writeLayout(w io.Writer, l *guest.Layout) {
	fsText := func(fs guest.FileSystem) string {
		s := fs.Type
		if fs.Label != "" {
			s += fmt.Sprintf(" label %q", fs.Label)
		}
		if fs.UUID != "" {
			s += " UUID " + fs.UUID
		}
		return printable(s)
	}
	switch {
	case l.Table != "":
		fmt.Fprintf(w, "Guest disk: %s partition table\n", strings.ToUpper(l.Table))
		fmt.Fprintf(w, "%-4s %-8s %14s %10s  %-22s %-16s %s\n", "#", "FILE", "START", "SIZE", "TYPE", "NAME", "FILE SYSTEM")
		for _, p := range l.Partitions {
			fmt.Fprintf(w, "%-4d %-8s %14d %10s  %-22s %-16s %s\n", p.Number, p.FileName(), p.Start, humanSize(p.Size),
				printable(p.Type), printable(p.Name), fsText(p.FS))
		}
	case l.FS.Type != "":
		fmt.Fprintf(w, "Guest disk: no partition table; the whole disk holds %s\n", fsText(l.FS))
	default:
		fmt.Fprintln(w, "Guest disk: no partition table or file system recognised")
	}
	if len(l.Volumes) > 0 {
		fmt.Fprintln(w, "LVM volumes:")
		for _, v := range l.Volumes {
			what := fsText(v.FS)
			name := v.FileName()
			if v.Unreadable != "" {
				name, what = "(not exposed)", "not exposed: "+printable(v.Unreadable)
			}
			fmt.Fprintf(w, "    %-24s %-20s %10s  %s\n", printable(v.VG+"/"+v.Name), printable(name), humanSize(v.Size), what)
		}
	}
	for _, p := range l.Problems {
		fmt.Fprintln(w, "problem:", printable(p))
	}
}

// writeInfoJSON writes in as indented JSON, each line after the first
// starting with prefix. The snapshot list, which can hold 65536 entries,
// is written one entry at a time rather than built whole in memory.
func writeInfoJSON(w io.Writer, in qcow2.Info, g *guest.Layout, prefix string) error {
	snaps := in.Snapshots
	in.Snapshots = nil
	b, err := json.MarshalIndent(struct {
		qcow2.Info
		Guest *guest.Layout `json:"guest,omitempty"`
	}{in, g}, prefix, "    ")
	if err != nil {
		return err
	}
	if len(snaps) == 0 {
		_, err = w.Write(b)
		return err
	}
	// b ends with a newline, prefix and the closing brace: put the
	// snapshots before them.
	end := bytes.LastIndexByte(b, '\n')
	if _, err := fmt.Fprintf(w, "%s,\n%s    \"snapshots\": [", b[:end], prefix); err != nil {
		return err
	}
	inner := prefix + "        "
	for i, sn := range snaps {
		e, err := json.MarshalIndent(sn, inner, "    ")
		if err != nil {
			return err
		}
		sep := ","
		if i == 0 {
			sep = ""
		}
		if _, err := fmt.Fprintf(w, "%s\n%s%s", sep, inner, e); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintf(w, "\n%s    ]%s", prefix, b[end:])
	return err
}

// writeInfo prints one image's description in qemu-img info's style.
func writeInfo(w io.Writer, in qcow2.Info) {
	fmt.Fprintf(w, "image: %s\n", printable(in.Filename))
	fmt.Fprintf(w, "file format: %s\n", in.Format)
	fmt.Fprintf(w, "virtual size: %s (%d bytes)\n", humanSize(in.VirtualSize), in.VirtualSize)
	fmt.Fprintf(w, "disk size: %s\n", humanSize(in.ActualSize))
	if in.Encrypted {
		fmt.Fprintln(w, "encrypted: yes")
	}
	if in.ClusterSize != 0 {
		fmt.Fprintf(w, "cluster_size: %d\n", in.ClusterSize)
	}
	if in.BackingFilename != "" {
		fmt.Fprintf(w, "backing file: %s", printable(in.BackingFilename))
		if in.FullBackingFilename != "" && in.FullBackingFilename != in.BackingFilename {
			fmt.Fprintf(w, " (actual path: %s)", printable(in.FullBackingFilename))
		}
		fmt.Fprintln(w)
		if in.BackingFilenameFormat != "" {
			fmt.Fprintf(w, "backing file format: %s\n", printable(in.BackingFilenameFormat))
		}
		if in.BackingError != "" {
			fmt.Fprintf(w, "backing file not opened: %s\n", printable(in.BackingError))
		}
	}
	if len(in.Snapshots) > 0 {
		// qemu-img's columns, to the space (bdrv_snapshot_dump).
		fmt.Fprintln(w, "Snapshot list:")
		fmt.Fprintf(w, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
		for _, sn := range in.Snapshots {
			clock := time.Duration(sn.VMClockSec)*time.Second + time.Duration(sn.VMClockNsec)
			icount := ""
			if sn.ICount != nil {
				icount = strconv.FormatInt(*sn.ICount, 10)
			}
			fmt.Fprintf(w, "%s%s%8s%20s%13s%11s\n", column(printable(sn.ID), 10), column(printable(sn.Name), 17), humanSize(int64(sn.VMStateSize)),
				time.Unix(sn.DateSec, sn.DateNsec).Format("2006-01-02 15:04:05"), vmClock(clock), icount)
		}
	}
	if fs := in.FormatSpecific; fs != nil && fs.Data != nil {
		d := fs.Data
		fmt.Fprintln(w, "Format specific information:")
		fmt.Fprintf(w, "    compat: %s (version %d)\n", d.Compat, d.Version)
		fmt.Fprintf(w, "    compression type: %s\n", d.CompressionType)
		if d.LazyRefcounts != nil {
			fmt.Fprintf(w, "    lazy refcounts: %t\n", *d.LazyRefcounts)
		}
		fmt.Fprintf(w, "    refcount bits: %d\n", d.RefcountBits)
		if e := d.Encrypt; e != nil {
			writeEncrypt(w, e)
		}
		if d.Corrupt != nil {
			fmt.Fprintf(w, "    corrupt: %t\n", *d.Corrupt)
			fmt.Fprintf(w, "    extended l2: %t\n", *d.ExtendedL2)
		}
		if d.DataFile != "" {
			fmt.Fprintf(w, "    data file: %s\n", printable(d.DataFile))
			fmt.Fprintf(w, "    data file raw: %t\n", d.DataFileRaw)
		}
		fmt.Fprintf(w, "    L1 size: %d\n", d.L1Size)
		fmt.Fprintf(w, "    incompatible features: %s\n", listOrNone(d.IncompatibleFeatures))
		fmt.Fprintf(w, "    compatible features: %s\n", listOrNone(d.CompatibleFeatures))
		fmt.Fprintf(w, "    autoclear features: %s\n", listOrNone(d.AutoclearFeatures))
	}
}

// writeEncrypt prints the encryption as qemu-img info does, fields in its
// order.
func writeEncrypt(w io.Writer, e *qcow2.EncryptInfo) {
	fmt.Fprintln(w, "    encrypt:")
	if e.Format == "luks" {
		fmt.Fprintf(w, "        ivgen alg: %s\n        hash alg: %s\n        cipher alg: %s\n        uuid: %s\n",
			e.IVGenAlg, e.HashAlg, e.CipherAlg, printable(e.UUID))
		if e.IVGenHashAlg != "" {
			fmt.Fprintf(w, "        ivgen hash alg: %s\n", e.IVGenHashAlg)
		}
	}
	fmt.Fprintf(w, "        format: %s\n", e.Format)
	if e.Format != "luks" {
		return
	}
	fmt.Fprintf(w, "        cipher mode: %s\n        slots:\n", e.CipherMode)
	for i, s := range e.Slots {
		fmt.Fprintf(w, "            [%d]:\n                active: %t\n", i, s.Active)
		if s.Iters != nil {
			fmt.Fprintf(w, "                iters: %d\n", *s.Iters)
		}
		fmt.Fprintf(w, "                key offset: %d\n", s.KeyOffset)
		if s.Stripes != nil {
			fmt.Fprintf(w, "                stripes: %d\n", *s.Stripes)
		}
	}
	fmt.Fprintf(w, "        payload offset: %d\n        master key iters: %d\n", e.PayloadOffset, e.MasterKeyIters)
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// humanSize prints sizes as qemu-img does (size_to_str): three
// significant digits, switching to the next unit once the number would
// reach 1000, so 1000 MiB prints as 0.977 GiB.
func humanSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	_, exp := math.Frexp(float64(n) / (1000.0 / 1024.0))
	i := max(0, (exp-1)/10)
	return fmt.Sprintf("%.3g %s", float64(n)/float64(uint64(1)<<(10*i)), units[i])
}

// column pads s to width, keeping at least one space after it, as
// qemu-img lays out its snapshot table.
func column(s string, width int) string {
	return s + strings.Repeat(" ", max(width-utf8.RuneCountInString(s), 1))
}

func vmClock(d time.Duration) string {
	h := int64(d / time.Hour)
	m := int64(d/time.Minute) % 60
	s := int64(d/time.Second) % 60
	ms := int64(d/time.Millisecond) % 1000
	return fmt.Sprintf("%02d:%02d:%02d.%03d", h, m, s, ms)
}
