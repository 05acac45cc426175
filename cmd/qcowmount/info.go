package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/urfave/cli/v2"
)

func infoCommand() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "describe an image and its backing chain",
		ArgsUsage: "IMAGE",
		Flags: append(imageFlags(),
			&cli.BoolFlag{Name: "json", Usage: "print JSON with qemu-img info's keys"},
			&cli.BoolFlag{Name: "backing-chain", Usage: "with --json, print an array: the image and every backing file"},
		),
		Action: infoAction,
	}
}

func infoAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return fmt.Errorf("info takes one IMAGE, got %d arguments (see qcowmount info --help)", c.NArg())
	}
	opts := imageOptions(c)
	img, err := qcow2.Open(c.Args().First(), opts)
	if err != nil && !opts.NoBacking {
		// Describe the image even when its chain cannot be opened, as
		// qemu-img info does, and say what is wrong with the chain.
		opts.NoBacking = true
		if top, topErr := qcow2.Open(c.Args().First(), opts); topErr == nil {
			fmt.Fprintln(os.Stderr, "qcowmount: warning:", err)
			img, err = top, nil
		}
	}
	if err != nil {
		return err
	}
	defer img.Close()
	chain := img.Chain()
	if c.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "    ")
		if c.Bool("backing-chain") {
			return enc.Encode(chain)
		}
		return enc.Encode(chain[0])
	}
	for i, in := range chain {
		if i > 0 {
			fmt.Println()
		}
		writeInfo(os.Stdout, in)
	}
	return nil
}

// writeInfo prints one image's description in qemu-img info's style.
func writeInfo(w io.Writer, in qcow2.Info) {
	fmt.Fprintf(w, "image: %s\n", in.Filename)
	fmt.Fprintf(w, "file format: %s\n", in.Format)
	fmt.Fprintf(w, "virtual size: %s (%d bytes)\n", humanSize(in.VirtualSize), in.VirtualSize)
	fmt.Fprintf(w, "disk size: %s\n", humanSize(in.ActualSize))
	if in.ClusterSize != 0 {
		fmt.Fprintf(w, "cluster_size: %d\n", in.ClusterSize)
	}
	if in.BackingFilename != "" {
		fmt.Fprintf(w, "backing file: %s", in.BackingFilename)
		if in.FullBackingFilename != "" && in.FullBackingFilename != in.BackingFilename {
			fmt.Fprintf(w, " (actual path: %s)", in.FullBackingFilename)
		}
		fmt.Fprintln(w)
		if in.BackingFilenameFormat != "" {
			fmt.Fprintf(w, "backing file format: %s\n", in.BackingFilenameFormat)
		}
	}
	if len(in.Snapshots) > 0 {
		fmt.Fprintln(w, "Snapshot list:")
		fmt.Fprintf(w, "%-4s %-20s %10s %19s %15s %12s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "DISK SIZE")
		for _, sn := range in.Snapshots {
			clock := time.Duration(sn.VMClockSec)*time.Second + time.Duration(sn.VMClockNsec)
			fmt.Fprintf(w, "%-4s %-20s %10s %19s %15s %12s\n", sn.ID, sn.Name, humanSize(int64(sn.VMStateSize)),
				time.Unix(sn.DateSec, sn.DateNsec).Format("2006-01-02 15:04:05"), vmClock(clock), humanSize(int64(sn.DiskSize)))
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
		if d.Corrupt != nil {
			fmt.Fprintf(w, "    corrupt: %t\n", *d.Corrupt)
			fmt.Fprintf(w, "    extended l2: %t\n", *d.ExtendedL2)
		}
		if d.DataFile != "" {
			fmt.Fprintf(w, "    data file: %s\n", d.DataFile)
			fmt.Fprintf(w, "    data file raw: %t\n", d.DataFileRaw)
		}
		fmt.Fprintf(w, "    L1 size: %d\n", d.L1Size)
		fmt.Fprintf(w, "    incompatible features: %s\n", listOrNone(d.IncompatibleFeatures))
		fmt.Fprintf(w, "    compatible features: %s\n", listOrNone(d.CompatibleFeatures))
		fmt.Fprintf(w, "    autoclear features: %s\n", listOrNone(d.AutoclearFeatures))
	}
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// humanSize prints sizes the way qemu-img does: 1 GiB, 64 KiB, 512 B.
func humanSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	s := fmt.Sprintf("%.3g", v)
	return s + " " + units[i]
}

func vmClock(d time.Duration) string {
	h := int64(d / time.Hour)
	m := int64(d/time.Minute) % 60
	s := int64(d/time.Second) % 60
	ms := int64(d/time.Millisecond) % 1000
	return fmt.Sprintf("%04d:%02d:%02d.%03d", h, m, s, ms)
}
