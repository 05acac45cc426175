package overlay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// ErrOutside is the error of a write that reaches past the end of the disk.
var ErrOutside = errors.New("write past the end of the disk")

// source says where a guest cluster's bytes are.
type source int

const (
	fromBase source = iota // unallocated here: the image beneath
	zeroed                 // a zero cluster
	written                // data in the overlay's file
)

// classify reads an L2 entry: where its cluster's bytes are, and its host
// offset.
func (o *Overlay) classify(e uint64) (source, int64, error) {
	host := int64(e & offsetMask)
	switch {
	case e&entryCompressed != 0:
		return 0, 0, fmt.Errorf("a compressed cluster (L2 entry %#x), which this writer does not read", e)
	case o.version >= 3 && e&entryZero != 0:
		return zeroed, host, nil
	case host != 0:
		return written, host, nil
	}
	return fromBase, 0, nil
}

// extent returns where the bytes at off are and how many of the next
// limit bytes are there too (for written data, contiguous in the file).
func (o *Overlay) extent(off, limit int64) (src source, host, n int64, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return 0, 0, 0, errors.New("the overlay is closed")
	}
	cs := int64(1) << o.clusterBits
	for n < limit {
		at := off + n
		c := at >> o.clusterBits
		step := min(cs-at&(cs-1), limit-n)
		var s source
		var h int64
		t, err := o.table(c/o.l2Entries, false)
		if err != nil {
			return 0, 0, 0, err
		}
		if t == nil { // no table: the rest of what it would map is unallocated
			step = min((c/o.l2Entries+1)*o.l2Entries*cs-at, limit-n)
		} else if s, h, err = o.classify(t.entries[c%o.l2Entries]); err != nil {
			return 0, 0, 0, fmt.Errorf("guest offset %d: %w", at, err)
		}
		if n == 0 {
			src, host = s, h+at&(cs-1)
		} else if s != src || (s == written && h != host+n) {
			break
		}
		n += step
	}
	return src, host, n, nil
}

// ReadAt reads the disk as written so far; it follows io.ReaderAt.
func (o *Overlay) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at negative offset %d", off)
	}
	if off >= o.size {
		return 0, io.EOF
	}
	want := len(p)
	p = p[:min(int64(len(p)), o.size-off)]
	for done := 0; done < len(p); {
		src, host, n, err := o.extent(off+int64(done), int64(len(p)-done))
		if err != nil {
			return done, err
		}
		b := p[done : done+int(n)]
		switch src {
		case written:
			if _, err := o.f.ReadAt(b, host); err != nil {
				return done, fmt.Errorf("reading the overlay at %d: %w", host, err)
			}
		case zeroed:
			clear(b)
		case fromBase:
			if err := o.readBase(b, off+int64(done)); err != nil {
				return done, err
			}
		}
		done += len(b)
	}
	if len(p) < want {
		return len(p), io.EOF
	}
	return len(p), nil
}

// readBase fills p with the image's bytes at off, zeros past its end.
func (o *Overlay) readBase(p []byte, off int64) error {
	n := max(0, min(int64(len(p)), o.base.Size()-off))
	if n > 0 {
		if m, err := o.base.ReadAt(p[:n], off); int64(m) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	clear(p[n:])
	return nil
}

// WriteAt writes p at off; it follows io.WriterAt. A write is durable
// once Sync returns after it.
func (o *Overlay) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > o.size {
		return 0, fmt.Errorf("%w: offset %d, disk of %d bytes", ErrOutside, off, o.size)
	}
	end := min(off+int64(len(p)), o.size)
	for at := off; at < end; {
		n, err := o.writeRun(at, p[at-off:end-off])
		if err != nil {
			return int(at - off), err
		}
		at += n
	}
	if end < off+int64(len(p)) {
		return int(end - off), fmt.Errorf("%w: %d bytes at %d, disk of %d bytes", ErrOutside, len(p), off, o.size)
	}
	return len(p), nil
}

// writeRun writes the start of p at off and says how much it wrote: a
// run of clusters written before, in place with one write; a run of whole
// clusters not written before, to as many new clusters with one write;
// or else one cluster (writeCluster).
func (o *Overlay) writeRun(off int64, p []byte) (int64, error) {
	cs := int64(1) << o.clusterBits
	first := min(cs-off&(cs-1), int64(len(p)))
	src, host, n, err := o.extent(off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	if src == written { // the file's clusters may not move: in place
		if _, err := o.f.WriteAt(p[:n], host); err != nil {
			return 0, fmt.Errorf("writing the overlay at %d: %w", host, err)
		}
		return n, nil
	}
	if off&(cs-1) == 0 && int64(len(p)) >= 2*cs {
		if n, err := o.writeNewClusters(off, p); n > 0 || err != nil {
			return n, err
		}
	}
	return first, o.writeCluster(off, p[:first])
}

// writeNewClusters writes the whole clusters at the start of p (off is
// aligned) that have no host cluster yet, none of them all zeros (those
// become zero clusters in writeCluster), to as many new clusters with one
// write. It writes nothing where fewer than two are.
func (o *Overlay) writeNewClusters(off int64, p []byte) (int64, error) {
	cs := int64(1) << o.clusterBits
	first := off >> o.clusterBits
	o.mu.Lock()
	var k int64
	for at := off; at+cs <= off+int64(len(p)); at += cs {
		if _, busy := o.copying[at>>o.clusterBits]; busy {
			break
		}
		s, h, err := o.lookup(at >> o.clusterBits)
		if err != nil {
			o.mu.Unlock()
			return 0, err
		}
		if s == written || h != 0 || isZero(p[at-off:at-off+cs]) {
			break
		}
		k++
	}
	if k < 2 {
		o.mu.Unlock()
		return 0, nil
	}
	host, err := o.alloc(k)
	if err != nil {
		o.mu.Unlock()
		return 0, err
	}
	done := o.startCopying(first, k)
	o.mu.Unlock()

	_, werr := o.f.WriteAt(p[:k*cs], host)

	o.mu.Lock()
	defer o.mu.Unlock()
	o.endCopying(first, k, done)
	if werr != nil { // the clusters leak; the disk is as it was
		return 0, fmt.Errorf("writing the overlay at %d: %w", host, werr)
	}
	for i := range k {
		if err := o.setEntry(first+i, uint64(host+i*cs)|entryCopied); err != nil {
			return 0, err
		}
	}
	return k * cs, nil
}

// writeCluster writes data, which lies inside one cluster, at off. A
// cluster written before is written in place; any other is copied to a
// new cluster first (from the image beneath, or zeros), unless data
// covers it whole. A whole cluster of zeros over one not written becomes
// a zero cluster, with nothing allocated. The copy and its write happen
// outside the lock: writers of other clusters go on meanwhile, those of
// this one wait for its L2 entry.
func (o *Overlay) writeCluster(off int64, data []byte) error {
	cs := int64(1) << o.clusterBits
	c, in := off>>o.clusterBits, off&(cs-1)
	o.mu.Lock()
	src, host, err := o.settled(c)
	if err != nil {
		o.mu.Unlock()
		return err
	}
	if src == written {
		o.mu.Unlock()
		if _, err := o.f.WriteAt(data, host+in); err != nil {
			return fmt.Errorf("writing the overlay at %d: %w", host+in, err)
		}
		return nil
	}
	whole := int64(len(data)) == cs
	if whole && o.version >= 3 && isZero(data) {
		defer o.mu.Unlock()
		if src == zeroed {
			return nil
		}
		return o.setEntry(c, uint64(host)|entryZero)
	}
	if host == 0 {
		if host, err = o.alloc(1); err != nil {
			o.mu.Unlock()
			return err
		}
	}
	done := o.startCopying(c, 1)
	o.mu.Unlock()

	werr := o.copyAndWrite(src, host, c, in, data)

	o.mu.Lock()
	defer o.mu.Unlock()
	o.endCopying(c, 1, done)
	if werr != nil { // a new cluster leaks; the disk is as it was
		return werr
	}
	return o.setEntry(c, uint64(host)|entryCopied)
}

// copyAndWrite writes guest cluster c to the host cluster at host: data
// at in, and around it what the cluster held (the image's bytes, or
// zeros).
func (o *Overlay) copyAndWrite(src source, host, c, in int64, data []byte) error {
	cs := int64(1) << o.clusterBits
	buf := data
	if int64(len(data)) < cs {
		buf = make([]byte, cs)
		if src == fromBase {
			if err := o.readBase(buf, c<<o.clusterBits); err != nil {
				return fmt.Errorf("copying guest offset %d from the image: %w", c<<o.clusterBits, err)
			}
		}
		copy(buf[in:], data)
	}
	if _, err := o.f.WriteAt(buf, host); err != nil {
		return fmt.Errorf("writing the overlay at %d: %w", host, err)
	}
	return nil
}

// startCopying marks n guest clusters from first as being written to new
// host clusters; the caller holds o.mu.
func (o *Overlay) startCopying(first, n int64) chan struct{} {
	done := make(chan struct{})
	for c := first; c < first+n; c++ {
		o.copying[c] = done
	}
	return done
}

// endCopying lets the writers waiting for those clusters go on.
func (o *Overlay) endCopying(first, n int64, done chan struct{}) {
	for c := first; c < first+n; c++ {
		delete(o.copying, c)
	}
	close(done)
}

// settled is lookup once no write is copying cluster c; the caller holds
// o.mu, which settled lets go of while it waits.
func (o *Overlay) settled(c int64) (source, int64, error) {
	for {
		done, busy := o.copying[c]
		if !busy {
			return o.lookup(c)
		}
		o.mu.Unlock()
		<-done
		o.mu.Lock()
	}
}

// lookup is where guest cluster c's bytes are; the caller holds o.mu.
func (o *Overlay) lookup(c int64) (source, int64, error) {
	if o.closed {
		return 0, 0, errors.New("the overlay is closed")
	}
	if o.failed != nil {
		return 0, 0, o.failed
	}
	t, err := o.table(c/o.l2Entries, false)
	if err != nil || t == nil {
		return fromBase, 0, err
	}
	return o.classify(t.entries[c%o.l2Entries])
}

// setEntry points guest cluster c's L2 entry at e, making its table where
// there is none.
func (o *Overlay) setEntry(c int64, e uint64) error {
	t, err := o.table(c/o.l2Entries, true)
	if err != nil {
		return err
	}
	t.entries[c%o.l2Entries] = e
	t.dirty = true
	return nil
}

// allocator is a disk that can tell its data from its holes.
type allocator interface {
	Allocation(off, limit int64) (data bool, n int64, err error)
}

// Allocation tells data from holes for lseek and st_blocks: what the
// overlay wrote is data, its zero clusters holes, and the rest is as the
// image beneath says.
func (o *Overlay) Allocation(off, limit int64) (bool, int64, error) {
	src, _, n, err := o.extent(off, min(limit, o.size-off))
	if err != nil || src != fromBase {
		return src == written, n, err
	}
	if below := o.base.Size() - off; below <= 0 {
		return false, n, nil
	} else {
		n = min(n, below)
	}
	if a, ok := o.base.(allocator); ok {
		return a.Allocation(off, n)
	}
	return true, n, nil
}

var zeros = make([]byte, 1<<maxClusterBits)

func isZero(b []byte) bool { return bytes.Equal(b, zeros[:len(b)]) }
