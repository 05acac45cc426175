// Package stream reads a guest disk from start to end with several reads
// in flight and hands its pieces over in order: data as bytes, holes as
// lengths, so that a writer can seek past them and a hash need not read
// them. A *qcow2.Image and a guest volume's View are such disks:
//
//	h := sha256.New()
//	err := stream.Run(ctx, img, stream.Options{}, func(p stream.Piece) error {
//		if p.Data == nil {
//			return writeZeros(h, p.Len) // a hole
//		}
//		_, err := h.Write(p.Data)
//		return err
//	})
//
// Run returns the first error of a read or of fn, or ctx's error.
package stream

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// Disk is a guest disk (qcow2.Image, guest.View) as Run reads it.
type Disk interface {
	io.ReaderAt
	Size() int64
	// Allocation reports whether the bytes from off on hold data or are
	// a hole that reads as zeros, and for how many bytes (at most limit).
	Allocation(off, limit int64) (data bool, n int64, err error)
}

// Piece is a run of the disk: Len bytes from Off, which are Data, or
// zeros where Data is nil (a hole).
type Piece struct {
	Off, Len int64
	Data     []byte
}

// Options tune Run; the zero value is good for local disks.
type Options struct {
	// Chunk is the most one read asks for (default 1 MiB). The qcow2
	// reader decompresses and decrypts a read's clusters in parallel;
	// give a disk with larger compressed clusters a chunk of one cluster
	// at least, or two reads in flight may decompress the same cluster.
	// Larger chunks only touch more fresh memory, which costs more than
	// it saves (docs/speed.md, export).
	Chunk int
	// Reads is how many reads are in flight (default twice the CPUs, at
	// least 4), which bounds the memory to (Reads+1)*Chunk.
	Reads int
}

const defaultChunk = 1 << 20

// Run calls fn with the pieces of d in order, from the start to the end,
// until fn or a read fails or ctx is done. fn must not keep a piece's
// Data after it returns.
func Run(ctx context.Context, d Disk, opts Options, fn func(Piece) error) error {
	if opts.Chunk <= 0 {
		opts.Chunk = defaultChunk
	}
	if opts.Reads <= 0 {
		opts.Reads = max(4, 2*runtime.GOMAXPROCS(0))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// The planner sends every piece to order, and data pieces also to
	// reads; order's capacity bounds the reads in flight.
	order := make(chan *job, opts.Reads)
	reads := make(chan *job)
	pool := sync.Pool{New: func() any { b := make([]byte, opts.Chunk); return &b }}
	var wg sync.WaitGroup
	for range opts.Reads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range reads {
				j.buf = pool.Get().(*[]byte)
				j.data = (*j.buf)[:j.Len]
				n, err := d.ReadAt(j.data, j.Off)
				switch {
				case n == len(j.data):
					err = nil // io.ReaderAt may say io.EOF at the end
				case err == nil || err == io.EOF:
					err = io.ErrUnexpectedEOF
				}
				j.err = err
				close(j.done)
			}
		}()
	}
	planErr := make(chan error, 1)
	go func() {
		defer close(reads)
		defer close(order)
		planErr <- plan(ctx, d, int64(opts.Chunk), order, reads)
	}()
	defer wg.Wait()
	defer cancel()

	for j := range order {
		select {
		case <-j.done:
		case <-ctx.Done():
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if j.err != nil {
			return fmt.Errorf("reading the disk at offset %d: %w", j.Off, j.err)
		}
		err := fn(Piece{Off: j.Off, Len: j.Len, Data: j.data})
		if j.buf != nil {
			pool.Put(j.buf)
		}
		if err != nil {
			return err
		}
	}
	if err := <-planErr; err != nil {
		return err
	}
	return ctx.Err()
}

// job is a piece on its way: done is closed once data (or err) is there.
type job struct {
	Piece
	buf  *[]byte
	data []byte
	err  error
	done chan struct{}
}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// plan walks d's allocation, cutting data into reads of at most chunk
// bytes on chunk boundaries and merging neighbouring holes.
func plan(ctx context.Context, d Disk, chunk int64, order, reads chan<- *job) error {
	size := d.Size()
	send := func(j *job) error {
		select {
		case order <- j:
		case <-ctx.Done():
			return ctx.Err()
		}
		if j.done == closed {
			return nil
		}
		select {
		case reads <- j:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var hole *job
	for off := int64(0); off < size; {
		data, n, err := d.Allocation(off, size-off)
		if err != nil {
			return fmt.Errorf("mapping the disk at offset %d: %w", off, err)
		}
		if n <= 0 || n > size-off {
			return fmt.Errorf("mapping the disk at offset %d: allocation run of %d bytes", off, n)
		}
		if !data {
			if hole == nil {
				hole = &job{Piece: Piece{Off: off}, done: closed}
			}
			hole.Len += n
			off += n
			continue
		}
		if hole != nil {
			if err := send(hole); err != nil {
				return err
			}
			hole = nil
		}
		for end := off + n; off < end; {
			m := min(end-off, chunk-off%chunk)
			if err := send(&job{Piece: Piece{Off: off, Len: m}, done: make(chan struct{})}); err != nil {
				return err
			}
			off += m
		}
	}
	if hole != nil {
		return send(hole)
	}
	return nil
}
