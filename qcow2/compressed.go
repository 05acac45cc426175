package qcow2

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/qcowmount/qcowmount/qcow2/internal/decompress"
)

// Compressed clusters: read, decompressed once however many reads want
// one at a time, whole clusters of a read decompressed in parallel, and
// those that fail remembered.

// compressedSlack is what a compressed cluster's bytes may take beyond a
// cluster in the images QEMU writes: it stores a cluster compressed only
// when that is smaller, and the bytes begin anywhere in a 512-byte sector.
// A descriptor may claim up to two clusters; those reads allocate.
const compressedSlack = 512

// decoding is a compressed cluster that one read is decompressing, for
// others that want it to wait on.
type decoding struct {
	done chan struct{}
	err  error // set before done is closed
}

// startDecoding registers a read that is about to decompress the cluster
// of key; if another read is at it already, it returns that one instead,
// and first is false.
func (c *chain) startDecoding(key cacheKey) (d *decoding, first bool) {
	c.decodingMu.Lock()
	defer c.decodingMu.Unlock()
	if d, ok := c.decoding[key]; ok {
		return d, false
	}
	d = &decoding{done: make(chan struct{})}
	c.decoding[key] = d
	return d, true
}

// endDecoding ends what startDecoding began and wakes the waiting reads.
func (c *chain) endDecoding(key cacheKey, d *decoding, err error) {
	c.decodingMu.Lock()
	delete(c.decoding, key)
	c.decodingMu.Unlock()
	d.err = err
	close(d.done)
}

// decompressorFor is the decoder of compressed clusters of an image of
// this compression type; the header check has refused any other.
func decompressorFor(compressionType uint8) func(dst, src []byte) error {
	if compressionType == CompressionZstd {
		return decompress.Zstd
	}
	return decompress.Deflate
}

// compressedJob is a compressed cluster to decompress into a whole cluster
// of the caller's buffer.
type compressedJob struct {
	dst  []byte
	desc uint64
}

// readCompressedPart serves part of a compressed cluster through the cache
// of decompressed clusters, so that small reads of one cluster decompress
// it once, even when they come at the same time (the kernel's readahead
// asks for the halves of a 2 MiB cluster at once).
func (img *Image) readCompressedPart(p []byte, desc uint64, inCluster int64) error {
	key := cacheKey{img.id, kindCluster, desc}
	c := img.chain
	for {
		if c.clusters.Read(key, func(cl []byte) { copy(p, cl[inCluster:]) }) {
			return nil
		}
		d, first := c.startDecoding(key)
		if !first {
			<-d.done
			if d.err != nil {
				return d.err
			}
			continue // now in the cache, unless evicted already
		}
		// Buffers come back from the cache as it evicts them: random
		// reads, which miss, then allocate nothing.
		cl := c.spare.Get(int(img.clusterSize()))
		err := img.decompressCluster(cl, desc)
		if err == nil {
			copy(p, cl[inCluster:])
			c.clusters.Add(key, cl, int64(len(cl)))
		} else {
			c.spare.Put(cl)
		}
		c.endDecoding(key, d, err)
		return err
	}
}

// runCompressed decompresses whole clusters: the read's own goroutine,
// and helpers while the chain has some to spare (the chain's helpers bound
// them for all its reads together, so that many reads at once do not
// start many goroutines each).
func (img *Image) runCompressed(jobs []compressedJob) error {
	switch len(jobs) {
	case 0:
		return nil
	case 1:
		return img.decompressCluster(jobs[0].dst, jobs[0].desc)
	}
	errs := make([]error, len(jobs))
	var next atomic.Int64
	work := func() {
		for j := next.Add(1) - 1; j < int64(len(jobs)); j = next.Add(1) - 1 {
			errs[j] = img.decompressCluster(jobs[j].dst, jobs[j].desc)
		}
	}
	var wg sync.WaitGroup
	helpers := img.chain.helpers
hire:
	for range len(jobs) - 1 {
		select {
		case helpers <- struct{}{}:
			wg.Go(func() {
				defer func() { <-helpers }()
				work()
			})
		default:
			break hire
		}
	}
	work()
	wg.Wait()
	return errors.Join(errs...)
}

// decompressCluster reads the compressed cluster that desc describes and
// decompresses it into dst, one cluster long.
// A cluster that fails to decompress is remembered, so that reading it
// again fails at once instead of paying for the bad stream every time.
func (img *Image) decompressCluster(dst []byte, desc uint64) error {
	key := cacheKey{img.id, kindCluster, desc}
	// The flag spares every good read the cache's lock.
	if img.chain.anyFailed.Load() {
		if err, ok := img.chain.failed.Get(key); ok {
			return err
		}
	}
	host, length := img.format.compressedRange(img, desc)
	var src []byte
	if length <= img.clusterSize()+compressedSlack {
		buf := img.chain.compressed.Get(int(img.clusterSize()))
		defer img.chain.compressed.Put(buf)
		src = buf[:length]
	} else {
		src = make([]byte, length)
	}
	// The last sector may run past the end of the file: use what is there.
	n, err := img.file.ReadAt(src, int64(host))
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading compressed cluster at host offset %#x: %w", host, err)
	}
	if err := img.decompress(dst, src[:n]); err != nil {
		err = &FormatError{Path: img.path, Field: "compressed cluster", Offset: int64(host), Msg: fmt.Sprintf("%d bytes do not decompress", length), Err: err}
		img.chain.failed.Add(key, err, 1)
		img.chain.anyFailed.Store(true)
		return err
	}
	return nil
}

// compressedRange decodes a compressed cluster descriptor: where the
// compressed bytes start and how many there are at most.
func (qcow2Format) compressedRange(img *Image, desc uint64) (host uint64, length int64) {
	// The count of additional 512-byte sectors, above the host offset.
	x := 62 - (img.clusterBits - 8)
	host = desc & (1<<x - 1)
	sectors := (desc >> x) & (1<<(img.clusterBits-8) - 1)
	return host, int64((sectors+1)*512 - host&511)
}
