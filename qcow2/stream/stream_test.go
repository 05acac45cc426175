package stream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// fakeDisk is bytes with a map of which of its blocks are holes.
type fakeDisk struct {
	b       []byte
	block   int64
	holes   map[int64]bool // by block number
	readErr int64          // a read covering this offset fails (-1: none)
	mapErr  int64          // Allocation at this offset fails (-1: none)
}

func (d *fakeDisk) Size() int64 { return int64(len(d.b)) }

func (d *fakeDisk) ReadAt(p []byte, off int64) (int, error) {
	if d.readErr >= off && d.readErr < off+int64(len(p)) {
		return 0, errors.New("bad sector")
	}
	n := copy(p, d.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (d *fakeDisk) Allocation(off, limit int64) (bool, int64, error) {
	if off == d.mapErr {
		return false, 0, errors.New("bad table")
	}
	hole := d.holes[off/d.block]
	n := d.block - off%d.block
	for next := off + n; next < off+limit && d.holes[next/d.block] == hole; next += d.block {
		n += d.block
	}
	return !hole, min(n, limit), nil
}

func newFakeDisk(size, block int64, holes ...int64) *fakeDisk {
	d := &fakeDisk{b: make([]byte, size), block: block, holes: map[int64]bool{}, readErr: -1, mapErr: -1}
	for i := range d.b {
		d.b[i] = byte(i*7 + i/251)
	}
	for _, h := range holes {
		d.holes[h] = true
		for i := h * block; i < min(size, (h+1)*block); i++ {
			d.b[i] = 0
		}
	}
	return d
}

func TestRunHandsOverTheDiskInOrder(t *testing.T) {
	tests := []struct {
		name   string
		disk   *fakeDisk
		opts   Options
		holes  int // pieces that are holes
		pieces int
	}{
		{"all data, one chunk", newFakeDisk(1000, 100), Options{Chunk: 4096}, 0, 1},
		{"all data, many chunks", newFakeDisk(10000, 100), Options{Chunk: 1024, Reads: 3}, 0, 10},
		{"holes merge", newFakeDisk(1000, 100, 2, 3, 4, 8), Options{Chunk: 4096}, 2, 5},
		{"all hole", newFakeDisk(1000, 100, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9), Options{}, 1, 1},
		{"odd size, chunk boundaries", newFakeDisk(1001, 64, 1), Options{Chunk: 100}, 1, 12},
		{"empty", newFakeDisk(0, 64), Options{}, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got bytes.Buffer
			holes, pieces := 0, 0
			err := Run(context.Background(), tc.disk, tc.opts, func(p Piece) error {
				if p.Off != int64(got.Len()) {
					t.Fatalf("piece at %d, want %d", p.Off, got.Len())
				}
				pieces++
				if p.Data == nil {
					holes++
					got.Write(make([]byte, p.Len))
					return nil
				}
				if int64(len(p.Data)) != p.Len {
					t.Fatalf("piece at %d: %d bytes of data for length %d", p.Off, len(p.Data), p.Len)
				}
				got.Write(p.Data)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), tc.disk.b) {
				t.Error("pieces differ from the disk")
			}
			if holes != tc.holes || pieces != tc.pieces {
				t.Errorf("%d pieces, %d holes; want %d, %d", pieces, holes, tc.pieces, tc.holes)
			}
		})
	}
}

func TestRunStopsAtErrors(t *testing.T) {
	stop := errors.New("stop")
	readFails := newFakeDisk(100000, 100)
	readFails.readErr = 50000
	mapFails := newFakeDisk(100000, 100, 3)
	mapFails.mapErr = 400
	tests := []struct {
		name string
		disk *fakeDisk
		fn   func(Piece) error
		want string
	}{
		{"read", readFails, func(Piece) error { return nil }, "reading the disk at offset 49152: bad sector"},
		{"allocation", mapFails, func(Piece) error { return nil }, "mapping the disk at offset 400: bad table"},
		{"fn", newFakeDisk(100000, 100), func(p Piece) error {
			if p.Off > 0 {
				return stop
			}
			return nil
		}, "stop"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Run(context.Background(), tc.disk, Options{Chunk: 4096, Reads: 2}, tc.fn)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestRunStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	err := Run(ctx, newFakeDisk(1<<20, 100), Options{Chunk: 1024}, func(Piece) error {
		if n++; n == 3 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if n != 3 {
		t.Errorf("%d pieces handed over after cancelling", n-3)
	}
}
