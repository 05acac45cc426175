package overlay

import (
	"encoding/binary"
	"fmt"
)

// The L1 table lives in memory whole (8 bytes per L2 table: 16 KiB for a
// TiB of disk in 64 KiB clusters); L2 tables are cached up to a budget,
// and those changed stay until a flush writes them.

// l2Table is one L2 table, decoded.
type l2Table struct {
	entries []uint64
	dirty   bool
	used    uint64 // when last looked up, for eviction
}

// table returns the L2 table of L1 entry i, or nil where there is none
// (every cluster it would map unallocated) and create is false; with
// create, a table is allocated there.
func (o *Overlay) table(i int64, create bool) (*l2Table, error) {
	o.tick++
	if t := o.tables[i]; t != nil {
		t.used = o.tick
		return t, nil
	}
	off := int64(o.l1[i] & offsetMask)
	if off == 0 && !create {
		return nil, nil
	}
	if err := o.makeRoomForTable(); err != nil {
		return nil, err
	}
	t := &l2Table{entries: make([]uint64, o.l2Entries), used: o.tick}
	if off != 0 {
		if o.tableBuf == nil {
			o.tableBuf = make([]byte, 8*o.l2Entries)
		}
		buf := o.tableBuf
		if _, err := o.f.ReadAt(buf, off); err != nil {
			return nil, fmt.Errorf("reading the L2 table at %d: %w", off, err)
		}
		for j := range t.entries {
			t.entries[j] = binary.BigEndian.Uint64(buf[8*j:])
		}
	} else {
		var err error
		if off, err = o.alloc(1); err != nil {
			return nil, err
		}
		t.dirty = true
		o.l1[i] = uint64(off) | entryCopied
		o.l1Dirty[i] = true
	}
	o.tables[i] = t
	return t, nil
}

// makeRoomForTable evicts a table when the cache is full: the least
// recently used of those with nothing to write, or else the least
// recently used after a flush, which leaves every table clean: the next
// evictions cost nothing, where writing back one table at a time would
// cost a sync each (its refcounts and data must be on disk first).
func (o *Overlay) makeRoomForTable() error {
	if len(o.tables) < o.maxTables {
		return nil
	}
	victim, v := int64(-1), (*l2Table)(nil)
	for i, t := range o.tables {
		if v == nil || (!t.dirty && v.dirty) || (t.dirty == v.dirty && t.used < v.used) {
			victim, v = i, t
		}
	}
	if v.dirty {
		if err := o.flush(); err != nil {
			return err
		}
	}
	delete(o.tables, victim)
	return nil
}

// flush makes every write so far durable, in an order that leaves the
// file consistent (at worst with leaked clusters) if it stops anywhere:
// data and refcounts first, then the L2 tables that point at the data,
// then the L1 entries that point at new tables, each step synced before
// the next begins. A refcount table that moved becomes the header's once
// it and its blocks are on disk.
func (o *Overlay) flush() error {
	if o.failed != nil {
		return o.failed
	}
	if err := o.flushSteps(); err != nil {
		// After a failed fsync the kernel may have dropped the pages it
		// could not write: nothing after it can be trusted.
		o.failed = fmt.Errorf("the overlay's file failed: %w", err)
		return o.failed
	}
	o.dropCleanBlocks()
	return nil
}

func (o *Overlay) flushSteps() error {
	if err := o.flushRefcounts(); err != nil {
		return err
	}
	if err := o.sync(); err != nil { // data written since, before the tables that point at it
		return err
	}
	for i, t := range o.tables {
		if !t.dirty {
			continue
		}
		if _, err := o.f.WriteAt(o.encodeTable(t.entries), int64(o.l1[i]&offsetMask)); err != nil {
			return fmt.Errorf("writing the L2 table of L1 entry %d: %w", i, err)
		}
		t.dirty = false
	}
	if err := o.sync(); err != nil { // tables, here and written back, before L1 names them
		return err
	}
	if len(o.l1Dirty) > 0 {
		for i := range o.l1Dirty {
			if _, err := o.f.WriteAt(encodeEntries(o.l1[i:i+1]), o.l1Offset+8*i); err != nil {
				return fmt.Errorf("writing L1 entry %d: %w", i, err)
			}
		}
		clear(o.l1Dirty)
	}
	return o.sync()
}

// flushRefcounts makes the refcounts durable: blocks, then the table
// entries that name them, then, where the table moved, the header.
func (o *Overlay) flushRefcounts() error {
	for pass := 0; o.refsDirty() || o.refs.moved; pass++ {
		if pass > 2 {
			return fmt.Errorf("refcounts still changing after %d passes", pass)
		}
		if err := o.writeRefcounts(); err != nil {
			return err
		}
		if err := o.sync(); err != nil {
			return err
		}
		if o.refs.moved {
			if err := o.pointHeaderAtTable(); err != nil {
				return err
			}
			if err := o.sync(); err != nil { // frees the old table: a second pass
				return err
			}
		}
	}
	return nil
}

// encodeTable encodes an L2 table into a buffer the overlay keeps for it.
func (o *Overlay) encodeTable(e []uint64) []byte {
	if o.tableBuf == nil {
		o.tableBuf = make([]byte, 8*o.l2Entries)
	}
	for i, v := range e {
		binary.BigEndian.PutUint64(o.tableBuf[8*i:], v)
	}
	return o.tableBuf
}

func (o *Overlay) refsDirty() bool {
	if len(o.refs.tableDirty) > 0 {
		return true
	}
	for _, b := range o.refs.blocks {
		if b.dirty {
			return true
		}
	}
	return false
}

// sync syncs the file if anything was written since the last sync.
func (o *Overlay) sync() error {
	if !o.unsynced.Load() {
		return nil
	}
	o.unsynced.Store(false)
	return o.f.Sync()
}
