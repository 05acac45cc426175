// Package bufpool keeps spare byte buffers of one size for reuse, and
// keeps them across garbage collections, unlike sync.Pool. Under the
// memory limit a mount sets, the collector runs often; a sync.Pool then
// lost its buffers at each collection, and megabyte buffers for large
// clusters were allocated and zeroed again for every read, which made the
// collector run more often still.
package bufpool

import (
	"math/bits"
	"sync"
)

// Pool hands out buffers of one size and keeps up to a fixed number of
// those given back. It is safe for concurrent use.
type Pool struct {
	size int
	keep int
	mu   sync.Mutex
	free [][]byte
}

// New returns a pool of buffers of size bytes that keeps at most keep
// spare ones; buffers given back beyond that are left to the collector.
func New(size, keep int) *Pool {
	return &Pool{size: size, keep: keep}
}

// Get returns a buffer of the pool's size. A reused buffer holds whatever its
// last user left in it.
func (p *Pool) Get() []byte {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return b
	}
	p.mu.Unlock()
	return make([]byte, p.size)
}

// Put gives b back for reuse. Buffers of another capacity than the size are
// ignored, so that a caller may pass any buffer it got elsewhere.
func (p *Pool) Put(b []byte) {
	if cap(b) != p.size {
		return
	}
	p.mu.Lock()
	if len(p.free) < p.keep {
		p.free = append(p.free, b[:p.size])
	}
	p.mu.Unlock()
}

// Classes are pools of buffers of 1<<b + extra bytes, one per b up to
// maxBits: for cluster-sized buffers, where a chain may mix sizes.
type Classes struct {
	extra int
	pools []*Pool
}

// NewClasses returns pools for b from 0 to maxBits, each keeping keep.
func NewClasses(maxBits, extra, keep int) *Classes {
	c := &Classes{extra: extra, pools: make([]*Pool, maxBits+1)}
	for b := range c.pools {
		c.pools[b] = New(1<<b+extra, keep)
	}
	return c
}

// Get returns a buffer of the smallest class that holds n bytes and the
// extra: 1<<b + extra bytes long, with 1<<b >= n. Beyond the largest
// class it allocates n + extra bytes.
func (c *Classes) Get(n int) []byte {
	if b := bits.Len(uint(n - 1)); b < len(c.pools) {
		return c.pools[b].Get()
	}
	return make([]byte, n+c.extra)
}

// Put gives back a buffer from Get; others are ignored.
func (c *Classes) Put(buf []byte) {
	if b := bits.Len(uint(cap(buf) - c.extra - 1)); b < len(c.pools) {
		c.pools[b].Put(buf)
	}
}
