package lru

import (
	"fmt"
	"sync"
	"testing"
)

func TestEvictsLeastRecentlyUsed(t *testing.T) {
	tests := []struct {
		name    string
		budget  int64
		ops     []string // "+k:cost" adds, "?k" gets, "=n" sets the budget
		present []string
		absent  []string
	}{
		{"fits", 10, []string{"+a:3", "+b:3", "+c:3"}, []string{"a", "b", "c"}, nil},
		{"evicts oldest", 6, []string{"+a:3", "+b:3", "+c:3"}, []string{"b", "c"}, []string{"a"}},
		{"get refreshes", 6, []string{"+a:3", "+b:3", "?a", "+c:3"}, []string{"a", "c"}, []string{"b"}},
		{"too big is not kept", 4, []string{"+a:3", "+b:5"}, []string{"a"}, []string{"b"}},
		{"replace updates cost", 6, []string{"+a:3", "+a:6"}, []string{"a"}, nil},
		{"many small evicted by one big", 6, []string{"+a:1", "+b:1", "+c:1", "+d:6"}, []string{"d"}, []string{"a", "b", "c"}},
		{"a smaller budget evicts oldest", 10, []string{"+a:3", "+b:3", "+c:3", "=6"}, []string{"b", "c"}, []string{"a"}},
		{"a larger budget keeps more", 3, []string{"=9", "+a:3", "+b:3", "+c:3"}, []string{"a", "b", "c"}, nil},
		{"a smaller budget refuses what no longer fits", 10, []string{"=4", "+a:5"}, nil, []string{"a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := New[string, int](tc.budget)
			budget := tc.budget
			for _, op := range tc.ops {
				switch op[0] {
				case '+':
					var k string
					var cost int64
					fmt.Sscanf(op[1:], "%1s:%d", &k, &cost)
					c.Add(k, 1, cost)
				case '?':
					c.Get(op[1:])
				case '=':
					fmt.Sscanf(op[1:], "%d", &budget)
					c.SetBudget(budget)
				}
			}
			for _, k := range tc.present {
				if _, ok := c.Get(k); !ok {
					t.Errorf("%q missing", k)
				}
			}
			for _, k := range tc.absent {
				if _, ok := c.Get(k); ok {
					t.Errorf("%q still present", k)
				}
			}
			if c.Used() > budget {
				t.Errorf("used %d > budget %d", c.Used(), budget)
			}
		})
	}
}

func TestConcurrentUseStaysInBudget(t *testing.T) {
	c := New[int, []byte](1000)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				k := (i * (g + 1)) % 97
				if v, ok := c.Get(k); ok && len(v) != k+1 {
					t.Errorf("key %d has %d bytes", k, len(v))
					return
				}
				c.Add(k, make([]byte, k+1), int64(k+1))
			}
		}(g)
	}
	wg.Wait()
	if c.Used() > 1000 {
		t.Fatalf("used %d > 1000", c.Used())
	}
}

func TestRecyclingHandsBackWhatLeaves(t *testing.T) {
	var evicted []int
	c := NewRecycling[string, int](2, func(v int) { evicted = append(evicted, v) })
	c.Add("a", 1, 1)
	c.Add("b", 2, 1)
	c.Add("a", 3, 1) // replaces 1
	c.Add("c", 4, 1) // evicts b (2)
	var got int
	if !c.Read("a", func(v int) { got = v }) || got != 3 {
		t.Fatalf("Read(a) = %d", got)
	}
	if c.Read("b", func(int) {}) {
		t.Fatal("b still there")
	}
	if len(evicted) != 2 || evicted[0] != 1 || evicted[1] != 2 {
		t.Fatalf("evicted %v, want [1 2]", evicted)
	}
}
