package lru

import (
	"runtime"
	"testing"
)

// TestEntryOverheadCoversTheBookkeeping: what an entry costs the heap
// beyond its value (the map's slot, the list's element, the entry) is
// within EntryOverhead, so that a cache of many small values that counts
// it stays within its budget in fact, not only on paper.
func TestEntryOverheadCoversTheBookkeeping(t *testing.T) {
	type key struct {
		image uint32
		kind  uint8
		off   uint64
	}
	const n = 200000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := New[key, []uint64](1 << 40)
	for i := range n {
		c.Add(key{1, 2, uint64(i) * 512}, nil, 0)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perEntry := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("%d bytes of bookkeeping per entry", perEntry)
	if perEntry > EntryOverhead {
		t.Errorf("an entry costs %d bytes beyond its value, more than EntryOverhead (%d)", perEntry, EntryOverhead)
	}
	runtime.KeepAlive(c)
}
