// Package bufpool keeps spare byte buffers of one size for reuse, and
// keeps them across garbage collections, unlike sync.Pool. Under the
// memory limit a mount sets, the collector runs often; a sync.Pool then
// lost its buffers at each collection, and megabyte buffers for large
// clusters were allocated and zeroed again for every read, which made the
// collector run more often still.
package bufpool

import "sync"

// Pool hands out buffers of Size bytes and keeps up to a fixed number of
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

// Size is the length of the buffers the pool hands out.
func (p *Pool) Size() int { return p.size }

// Get returns a buffer of Size bytes. A reused buffer holds whatever its
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

// Put gives b back for reuse. Buffers of another capacity than Size are
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
