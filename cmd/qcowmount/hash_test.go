package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/guest"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
	"github.com/qcowmount/qcowmount/qcow2/stream"
)

// memDisk is bytes whose zero 4 KiB blocks are holes.
type memDisk []byte

func (d memDisk) Size() int64 { return int64(len(d)) }

func (d memDisk) ReadAt(p []byte, off int64) (int, error) { return copy(p, d[off:]), nil }

func (d memDisk) Allocation(off, limit int64) (bool, int64, error) {
	zero := func(o int64) bool {
		return bytes.Count(d[o:min(o+4096, d.Size())], []byte{0}) == int(min(4096, d.Size()-o))
	}
	hole := zero(off)
	n := 4096 - off%4096
	for off+n < off+limit && zero(off+n) == hole {
		n += 4096
	}
	return !hole, min(n, limit), nil
}

// TestFeedHandsEachPartItsBytes feeds one read of a disk to parts that lie
// on it (one of them across a hole), and reads a volume whose segments lie
// out of order through its own view, as planHashes does.
func TestFeedHandsEachPartItsBytes(t *testing.T) {
	disk := make(memDisk, 64<<10)
	for i := range disk {
		if i < 20<<10 || i >= 40<<10 {
			disk[i] = byte(i*13 + i>>9)
		}
	}
	tests := []struct {
		name string
		segs []guest.Segment
	}{
		{"whole disk", []guest.Segment{{Start: 0, Size: disk.Size()}}},
		{"across the hole", []guest.Segment{{Start: 10 << 10, Size: 40 << 10}}},
		{"two segments in order", []guest.Segment{{Start: 1000, Size: 3000}, {Start: 50 << 10, Size: 10 << 10}}},
		{"unaligned end", []guest.Segment{{Start: 60<<10 + 1, Size: 4<<10 - 1}}},
	}
	var parts []*hashed
	for _, tc := range tests {
		parts = append(parts, newHashed(tc.name, tc.segs, []string{"sha256"}))
	}
	if err := stream.Run(context.Background(), disk, stream.Options{Chunk: 8 << 10}, func(p stream.Piece) error {
		return feed(context.Background(), parts, p)
	}); err != nil {
		t.Fatal(err)
	}
	for i, tc := range tests {
		var want []byte
		for _, s := range tc.segs {
			want = append(want, disk[s.Start:s.Start+s.Size]...)
		}
		if got := hex.EncodeToString(parts[i].hashes[0].Sum(nil)); got != qemutest.SHA256(want) {
			t.Errorf("%s: %s, want %s", tc.name, got, qemutest.SHA256(want))
		}
	}

	// Segments out of order: their own read, through the view.
	segs := []guest.Segment{{Start: 50 << 10, Size: 10 << 10}, {Start: 1000, Size: 3000}}
	view := guest.NewView(disk, segs)
	h := newHashed("reversed", whole(view.Size()), []string{"sha256"})
	if err := stream.Run(context.Background(), view, stream.Options{}, func(p stream.Piece) error {
		return feed(context.Background(), []*hashed{h}, p)
	}); err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, disk[50<<10:60<<10]...), disk[1000:4000]...)
	if got := hex.EncodeToString(h.hashes[0].Sum(nil)); got != qemutest.SHA256(want) {
		t.Errorf("reversed segments: %s, want %s", got, qemutest.SHA256(want))
	}
}
