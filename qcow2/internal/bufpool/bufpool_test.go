package bufpool

import "testing"

func TestPool(t *testing.T) {
	tests := []struct {
		name      string
		keep, put int
		putCap    int // capacity of the buffers given back; 0: the pool's size
		reused    int // of put+1 Gets after the Puts, how many return a kept buffer
	}{
		{"nothing given back", 4, 0, 0, 0},
		{"fewer than kept", 4, 2, 0, 2},
		{"more than kept", 4, 6, 0, 4},
		{"keeps none", 0, 3, 0, 0},
		{"another size", 4, 2, 100, 0},
	}
	const size = 64
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New(size, tt.keep)
			given := map[*byte]bool{}
			var bufs [][]byte
			for range tt.put {
				b := p.Get()
				if tt.putCap != 0 {
					b = make([]byte, tt.putCap)
				}
				given[&b[0]] = true
				bufs = append(bufs, b)
			}
			for _, b := range bufs {
				p.Put(b)
			}
			reused := 0
			for range tt.put + 1 {
				b := p.Get()
				if len(b) != size || cap(b) != size {
					t.Fatalf("Get: len %d cap %d, want %d", len(b), cap(b), size)
				}
				if given[&b[0]] {
					reused++
					delete(given, &b[0])
				}
			}
			if reused != tt.reused {
				t.Errorf("%d buffers reused, want %d", reused, tt.reused)
			}
		})
	}
}

func TestClasses(t *testing.T) {
	const extra = 64
	c := NewClasses(12, extra, 2)
	tests := []struct {
		n, wantLen int
		kept       bool // a buffer given back is handed out again
	}{
		{1, 1 + extra, true},
		{4096, 4096 + extra, true},
		{3000, 4096 + extra, true},
		{4097, 4097 + extra, false}, // beyond the largest class
		{0, extra, false},
	}
	for _, tt := range tests {
		b := c.Get(tt.n)
		if len(b) != tt.wantLen {
			t.Errorf("Get(%d): %d bytes, want %d", tt.n, len(b), tt.wantLen)
		}
		c.Put(b)
		if again := c.Get(tt.n); (&again[:1][0] == &b[:1][0]) != tt.kept {
			t.Errorf("Get(%d) after Put: the same buffer is %v, want %v", tt.n, !tt.kept, tt.kept)
		}
	}
}
