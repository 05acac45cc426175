// Package lru is a size-bounded least-recently-used cache, safe for
// concurrent use. Values are treated as immutable once added, so a caller
// may keep using a value from Get after it has been evicted; a cache with
// an eviction callback (which may recycle values) must be read with Read.
package lru

import (
	"container/list"
	"sync"
)

// EntryOverhead is what an entry costs the heap beyond its value: the
// map's slot, the list's element and the entry itself (measured in
// TestEntryOverheadCoversTheBookkeeping). A cache of small values adds it
// to their cost, so that its budget is what it holds in fact.
const EntryOverhead = 160

// Cache maps keys to values whose cost (usually bytes) adds up to at most
// the budget given to New.
type Cache[K comparable, V any] struct {
	mu     sync.Mutex
	budget int64
	used   int64
	order  *list.List // front = most recently used
	items  map[K]*list.Element
	evict  func(V) // called, under the lock, with each value that leaves
}

type entry[K comparable, V any] struct {
	key  K
	val  V
	cost int64
}

// New returns a cache holding at most budget worth of values.
func New[K comparable, V any](budget int64) *Cache[K, V] {
	return &Cache[K, V]{budget: budget, order: list.New(), items: map[K]*list.Element{}}
}

// NewRecycling is New with a callback for each value evicted or replaced,
// so that its memory can be reused. Values must then be read with Read.
func NewRecycling[K comparable, V any](budget int64, evict func(V)) *Cache[K, V] {
	c := New[K, V](budget)
	c.evict = evict
	return c
}

// Read calls fn with the value for key, under the lock, and marks it
// recently used; it reports whether key was there.
func (c *Cache[K, V]) Read(key K, fn func(V)) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if ok {
		c.order.MoveToFront(el)
		fn(el.Value.(*entry[K, V]).val)
	}
	return ok
}

// Get returns the value for key and marks it recently used.
func (c *Cache[K, V]) Get(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.order.MoveToFront(el)
		return el.Value.(*entry[K, V]).val, true
	}
	var zero V
	return zero, false
}

// Add stores val under key, evicting the least recently used values until
// the budget holds. A value costing more than the whole budget is not kept.
func (c *Cache[K, V]) Add(key K, val V, cost int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cost > c.budget {
		return
	}
	if el, ok := c.items[key]; ok {
		e := el.Value.(*entry[K, V])
		c.used += cost - e.cost
		if c.evict != nil {
			c.evict(e.val)
		}
		e.val, e.cost = val, cost
		c.order.MoveToFront(el)
	} else {
		c.items[key] = c.order.PushFront(&entry[K, V]{key, val, cost})
		c.used += cost
	}
	c.shrink()
}

// SetBudget changes the budget, evicting what no longer fits.
func (c *Cache[K, V]) SetBudget(budget int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.budget = budget
	c.shrink()
}

// shrink evicts the least recently used values until the budget holds.
func (c *Cache[K, V]) shrink() {
	for c.used > c.budget {
		el := c.order.Back()
		e := el.Value.(*entry[K, V])
		c.order.Remove(el)
		delete(c.items, e.key)
		c.used -= e.cost
		if c.evict != nil {
			c.evict(e.val)
		}
	}
}

// Used returns the total cost of the values held.
func (c *Cache[K, V]) Used() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}
