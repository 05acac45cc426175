package overlay

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
)

// Clusters are allocated at the end of the file and never freed while
// the overlay is written (but for a refcount table that moved), so every
// cluster allocated has refcount 1 and the refcount blocks change only
// near the end of the file. The table of refcount blocks grows, moving to
// the end, when the file outgrows what it covers.

// refcounts is the refcount table and the blocks read or written so far.
type refcounts struct {
	table         []uint64 // host offsets of the refcount blocks
	tableOffset   int64
	tableClusters int64
	tableDirty    map[int64]bool // entries to write where the table is
	blocks        map[int64]*refBlock
	// moved: the table lives at tableOffset only in memory until a flush
	// writes it whole and points the header at it; the header's table
	// (oldOffset, oldClusters) is freed after that.
	moved                  bool
	oldOffset, oldClusters int64
}

// refBlock is one refcount block, decoded.
type refBlock struct {
	counts []uint16
	dirty  bool
}

func (o *Overlay) refsPerBlock() int64 { return int64(1) << (o.clusterBits - 1) }

// alloc reserves n contiguous clusters at the end of the file, each with
// refcount 1, and returns the offset of the first.
func (o *Overlay) alloc(n int64) (int64, error) {
	off := o.end
	if uint64(off)+uint64(n)<<o.clusterBits > offsetMask {
		return 0, fmt.Errorf("the overlay is full: its file would pass %d bytes", offsetMask)
	}
	o.end += n << o.clusterBits
	for c := off >> o.clusterBits; c < o.end>>o.clusterBits; c++ {
		if err := o.setRefcount(c, 1); err != nil {
			return 0, err
		}
	}
	return off, nil
}

// setRefcount sets the refcount of cluster c.
func (o *Overlay) setRefcount(c int64, n uint16) error {
	b, err := o.refBlock(c / o.refsPerBlock())
	if err != nil {
		return err
	}
	b.counts[c%o.refsPerBlock()] = n
	b.dirty = true
	return nil
}

// refBlock returns refcount block i: read from the file, or a new one
// placed at the end of the file (where it counts itself, or the next
// block does), the table grown first if it has no entry i.
func (o *Overlay) refBlock(i int64) (*refBlock, error) {
	r := &o.refs
	if b := r.blocks[i]; b != nil {
		return b, nil
	}
	if i >= int64(len(r.table)) {
		if err := o.growRefTable(i); err != nil {
			return nil, err
		}
		if b := r.blocks[i]; b != nil { // made while counting the new table
			return b, nil
		}
	}
	b := &refBlock{counts: make([]uint16, o.refsPerBlock())}
	if off := int64(r.table[i] & offsetMask); off != 0 {
		buf := make([]byte, 1<<o.clusterBits)
		if _, err := o.f.ReadAt(buf, off); err != nil {
			return nil, fmt.Errorf("reading refcount block %d at %d: %w", i, off, err)
		}
		for j := range b.counts {
			b.counts[j] = binary.BigEndian.Uint16(buf[2*j:])
		}
		r.blocks[i] = b
		return b, nil
	}
	off := o.end
	o.end += 1 << o.clusterBits
	b.dirty = true
	r.blocks[i] = b
	r.table[i] = uint64(off)
	r.tableDirty[i] = true
	return b, o.setRefcount(off>>o.clusterBits, 1)
}

// growRefTable moves the refcount table to the end of the file, large
// enough for entry i and for twice the blocks it had. The header points
// at it once a flush has written it and the blocks it names.
func (o *Overlay) growRefTable(i int64) error {
	r := &o.refs
	perCluster := int64(1) << (o.clusterBits - 3)
	entries := max(2*int64(len(r.table)), i+1, perCluster)
	clusters := (entries + perCluster - 1) / perCluster
	// The new table must also count itself and the blocks that count it.
	for (clusters*perCluster)*o.refsPerBlock() < o.end>>o.clusterBits+2*clusters+2 {
		clusters *= 2
	}
	entries = clusters * perCluster
	prevOffset, prevClusters, wasMoved := r.tableOffset, r.tableClusters, r.moved
	if !r.moved {
		r.oldOffset, r.oldClusters = r.tableOffset, r.tableClusters
	}
	table := make([]uint64, entries)
	copy(table, r.table)
	off := o.end
	o.end += clusters << o.clusterBits
	r.table, r.tableOffset, r.tableClusters, r.moved = table, off, clusters, true
	for c := off >> o.clusterBits; c < o.end>>o.clusterBits; c++ {
		if err := o.setRefcount(c, 1); err != nil {
			return err
		}
	}
	if wasMoved { // a table no header ever named: free it now
		return o.freeClusters(prevOffset, prevClusters)
	}
	return nil
}

func (o *Overlay) freeClusters(off, n int64) error {
	for c := off >> o.clusterBits; c < off>>o.clusterBits+n; c++ {
		if err := o.setRefcount(c, 0); err != nil {
			return err
		}
	}
	return nil
}

// writeRefcounts writes the dirty refcount blocks, syncs, then writes the
// table entries that name new blocks (the whole table where it moved), as
// QEMU does: a table entry never names a block that is not on disk.
func (o *Overlay) writeRefcounts() error {
	r := &o.refs
	for i, b := range r.blocks {
		if !b.dirty {
			continue
		}
		buf := make([]byte, 1<<o.clusterBits)
		for j, n := range b.counts {
			binary.BigEndian.PutUint16(buf[2*j:], n)
		}
		if _, err := o.f.WriteAt(buf, int64(r.table[i]&offsetMask)); err != nil {
			return fmt.Errorf("writing refcount block %d: %w", i, err)
		}
		b.dirty = false
	}
	if !r.moved && len(r.tableDirty) == 0 {
		return nil
	}
	if err := o.sync(); err != nil {
		return err
	}
	if r.moved { // no header names it yet
		if _, err := o.f.WriteAt(encodeEntries(r.table), r.tableOffset); err != nil {
			return fmt.Errorf("writing the refcount table: %w", err)
		}
		clear(r.tableDirty)
		return nil
	}
	// A new block lies at the end of the file, where a later block may
	// count it: name the later blocks first, each on disk before the next
	// names a block it counts.
	for n, i := range slices.Backward(slices.Sorted(maps.Keys(r.tableDirty))) {
		if n < len(r.tableDirty)-1 { // each after the one before is on disk
			if err := o.sync(); err != nil {
				return err
			}
		}
		if _, err := o.f.WriteAt(encodeEntries(r.table[i:i+1]), r.tableOffset+8*i); err != nil {
			return fmt.Errorf("writing refcount table entry %d: %w", i, err)
		}
	}
	clear(r.tableDirty)
	return nil
}

// pointHeaderAtTable makes a moved table the header's, with one write of
// its offset and size (once the table and its blocks are on disk), and
// frees the table the header named before.
func (o *Overlay) pointHeaderAtTable() error {
	r := &o.refs
	var buf [12]byte
	binary.BigEndian.PutUint64(buf[0:], uint64(r.tableOffset))
	binary.BigEndian.PutUint32(buf[8:], uint32(r.tableClusters))
	if _, err := o.f.WriteAt(buf[:], offRefcountTable); err != nil {
		return fmt.Errorf("pointing the header at the new refcount table: %w", err)
	}
	r.moved = false
	return o.freeClusters(r.oldOffset, r.oldClusters)
}

// dropCleanBlocks forgets refcount blocks with nothing to write but the
// last one, where allocation goes on: they are read again if needed.
func (o *Overlay) dropCleanBlocks() {
	last := (o.end >> o.clusterBits) / o.refsPerBlock()
	for i, b := range o.refs.blocks {
		if !b.dirty && i != last {
			delete(o.refs.blocks, i)
		}
	}
}

func encodeEntries(e []uint64) []byte {
	b := make([]byte, 8*len(e))
	for i, v := range e {
		binary.BigEndian.PutUint64(b[8*i:], v)
	}
	return b
}
