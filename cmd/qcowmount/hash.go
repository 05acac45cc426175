package main

import (
	"bufio"
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/guest"
	"github.com/qcowmount/qcowmount/qcow2/stream"
	"github.com/urfave/cli/v2"
	"lukechampine.com/blake3"
)

// hashOptions are hash's flags.
type hashOptions struct {
	image        imageOptions
	part         partOptions
	progress     progressOptions
	algo         string
	noPartitions bool
	json         bool
}

func hashCommand() *cli.Command {
	o := hashOptions{image: defaultImageOptions(), algo: "sha256"}
	return &cli.Command{
		Name:      "hash",
		Usage:     "print checksums of the guest disk and of each partition and LVM volume in it",
		ArgsUsage: "IMAGE",
		Flags: slices.Concat(o.image.flags(), o.part.flags(), o.progress.flags(), []cli.Flag{
			&cli.StringFlag{Name: "algo", Aliases: []string{"a"}, Value: o.algo, Destination: &o.algo, Usage: "`LIST` of checksums, comma separated, computed in one read: " + strings.Join(algoNames, ", ")},
			&cli.BoolFlag{Name: "no-partitions", Destination: &o.noPartitions, Usage: "hash the whole disk alone"},
			&cli.BoolFlag{Name: "json", Destination: &o.json, Usage: "print JSON"},
		}),
		Action: action("hash", func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			return runHash(ctx, o, args, stdout, stderr)
		}),
	}
}

// The checksums hash offers, with the tag BSD-style lines give them.
var (
	algoNames = []string{"md5", "sha1", "sha256", "sha512", "blake3"}
	algoTags  = map[string]string{"md5": "MD5", "sha1": "SHA1", "sha256": "SHA256", "sha512": "SHA512", "blake3": "BLAKE3"}
)

func newHash(algo string) hash.Hash {
	switch algo {
	case "md5":
		return md5.New()
	case "sha1":
		return sha1.New()
	case "sha256":
		return sha256.New()
	case "sha512":
		return sha512.New()
	}
	return blake3.New(32, nil)
}

func parseAlgos(list string) ([]string, error) {
	var algos []string
	for _, a := range strings.Split(list, ",") {
		a = strings.ToLower(strings.TrimSpace(a))
		if !slices.Contains(algoNames, a) {
			return nil, usageError{fmt.Errorf("--algo %q: %q is not one of %s", list, a, strings.Join(algoNames, ", "))}
		}
		if !slices.Contains(algos, a) {
			algos = append(algos, a)
		}
	}
	return algos, nil
}

// hashed is a part of the disk with its running checksums; segs say where
// its bytes lie on the disk read, in order.
type hashed struct {
	Name      string            `json:"name"`
	Partition int               `json:"partition,omitempty"`
	Volume    string            `json:"volume,omitempty"`
	Size      int64             `json:"size"`
	Sums      map[string]string `json:"sums"`
	segs      []guest.Segment
	hashes    []hash.Hash
}

// runHash prints on stdout the checksums of the guest disk of the image
// args names, and of its partitions and volumes.
func runHash(ctx context.Context, o hashOptions, args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		return usageError{fmt.Errorf("hash takes one IMAGE, got %d arguments (see qcowmount hash --help)", len(args))}
	}
	algos, err := parseAlgos(o.algo)
	if err != nil {
		return err
	}
	img, err := openForReading(ctx, o.image, args[0], stderr)
	if err != nil {
		return err
	}
	defer img.Close()
	// Each read of the disk feeds every part that lies on it in order;
	// a volume whose segments do not gets a read of its own.
	var reads []hashRead
	if o.part.partitionSet || o.part.volume != "" {
		p, err := selectPart(o.part, img.Image)
		if err != nil {
			return err
		}
		reads = []hashRead{{p.disk, []*hashed{newHashed(p.name, whole(p.disk.Size()), algos)}}}
	} else if reads, err = planHashes(img.Image, !o.noPartitions, algos, stderr); err != nil {
		return err
	}
	var all []*hashed
	total := int64(0)
	for _, r := range reads {
		all = append(all, r.parts...)
		total += r.disk.Size()
	}
	bar := newProgress(o.progress, stderr, total, "hash")
	for _, r := range reads {
		if err := stream.Run(ctx, r.disk, streamOptions(img.Image), func(p stream.Piece) error {
			if err := feed(ctx, r.parts, p); err != nil {
				return err
			}
			bar.add(p.Len)
			return nil
		}); err != nil {
			if ctx.Err() != nil {
				return exitError{exitInterrupted, errors.New("hash: interrupted")}
			}
			return imageError{err}
		}
	}
	bar.done()
	for _, h := range all {
		h.Sums = map[string]string{}
		for i, a := range algos {
			h.Sums[a] = hex.EncodeToString(h.hashes[i].Sum(nil))
		}
	}
	out := bufio.NewWriter(stdout)
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "    ")
		name := args[0]
		if isURL(name) {
			name = img.Path()
		}
		err = enc.Encode(struct {
			Image      string    `json:"image"`
			Algorithms []string  `json:"algorithms"`
			Parts      []*hashed `json:"parts"`
		}{name, algos, all})
	} else {
		writeSums(out, all, algos)
	}
	if err != nil {
		return err
	}
	return out.Flush()
}

// writeSums prints sha256sum's lines for one checksum and BSD-style
// tagged lines ("SHA256 (disk.raw) = ...") for several, which
// `sha256sum -c` and `cksum -c` check in the mount's directory.
func writeSums(w *bufio.Writer, parts []*hashed, algos []string) {
	for _, h := range parts {
		for _, a := range algos {
			if len(algos) == 1 {
				fmt.Fprintf(w, "%s  %s\n", h.Sums[a], h.Name)
			} else {
				fmt.Fprintf(w, "%s (%s) = %s\n", algoTags[a], h.Name, h.Sums[a])
			}
		}
	}
}

type hashRead struct {
	disk  stream.Disk
	parts []*hashed
}

func whole(size int64) []guest.Segment { return []guest.Segment{{Start: 0, Size: size}} }

func newHashed(name string, segs []guest.Segment, algos []string) *hashed {
	h := &hashed{Name: name, segs: segs}
	for _, s := range segs {
		h.Size += s.Size
	}
	for _, a := range algos {
		h.hashes = append(h.hashes, newHash(a))
	}
	return h
}

// planHashes lists the reads that hash the disk and, with partitions,
// each partition and readable volume in it.
func planHashes(img *qcow2.Image, partitions bool, algos []string, stderr io.Writer) ([]hashRead, error) {
	disk := hashRead{disk: img, parts: []*hashed{newHashed("disk.raw", whole(img.Size()), algos)}}
	if !partitions {
		return []hashRead{disk}, nil
	}
	layout, err := guest.Scan(img)
	if err != nil {
		return nil, imageError{fmt.Errorf("reading the guest's partition table: %w", err)}
	}
	for _, p := range layout.Problems {
		fmt.Fprintln(stderr, "qcowmount: warning:", printable(p))
	}
	reads := []hashRead{disk}
	for _, p := range layout.Partitions {
		h := newHashed(p.FileName(), []guest.Segment{{Start: p.Start, Size: p.Size}}, algos)
		h.Partition = p.Number
		reads[0].parts = append(reads[0].parts, h)
	}
	for _, v := range layout.Volumes {
		if v.Unreadable != "" {
			continue
		}
		h := newHashed(v.FileName(), v.Segments, algos)
		h.Volume = v.VG + "/" + v.Name
		if slices.IsSortedFunc(v.Segments, func(a, b guest.Segment) int { return int(a.Start - b.Start) }) {
			reads[0].parts = append(reads[0].parts, h)
		} else {
			h.segs = whole(h.Size)
			reads = append(reads, hashRead{v.View(img), []*hashed{h}})
		}
	}
	return reads, nil
}

// feed hands the piece's bytes to the parts that hold them, one
// goroutine per checksum: they are independent, and the next piece waits.
// A hole's zeros stop when ctx ends, with its error.
func feed(ctx context.Context, parts []*hashed, p stream.Piece) error {
	var wg sync.WaitGroup
	for _, h := range parts {
		for _, s := range h.segs {
			from, to := max(p.Off, s.Start), min(p.Off+p.Len, s.Start+s.Size)
			if from >= to {
				continue
			}
			for _, sum := range h.hashes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if p.Data != nil {
						sum.Write(p.Data[from-p.Off : to-p.Off])
						return
					}
					writeZeros(ctx, sum, to-from) // a hash.Hash never fails to write
				}()
			}
		}
	}
	wg.Wait()
	return ctx.Err()
}
