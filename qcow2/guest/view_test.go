package guest

import (
	"bytes"
	"testing"
)

// memDisk is a disk in memory that takes writes.
type memDisk struct{ b []byte }

func (m *memDisk) ReadAt(p []byte, off int64) (int, error)  { return copy(p, m.b[off:]), nil }
func (m *memDisk) WriteAt(p []byte, off int64) (int, error) { return copy(m.b[off:], p), nil }
func (m *memDisk) Size() int64                              { return int64(len(m.b)) }
func (m *memDisk) Sync() error                              { return nil }

// TestViewWrites: a view's writes land at the disk's offsets of its
// segments, and never outside them.
func TestViewWrites(t *testing.T) {
	segs := []Segment{{Start: 10, Size: 4}, {Start: 30, Size: 6}} // a volume of two segments
	for _, tc := range []struct {
		name    string
		off     int64
		data    string
		wantErr bool
		disk    map[int64]string // disk offset: bytes written there
	}{
		{"in the first segment", 1, "ab", false, map[int64]string{11: "ab"}},
		{"across the segments", 3, "abc", false, map[int64]string{13: "a", 30: "bc"}},
		{"to the end", 4, "abcdef", false, map[int64]string{30: "abcdef"}},
		{"past the end: what fits, and an error", 8, "abcd", true, map[int64]string{34: "ab"}},
		{"beyond the end", 11, "a", true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &memDisk{make([]byte, 64)}
			want := bytes.Clone(d.b)
			for off, s := range tc.disk {
				copy(want[off:], s)
			}
			_, err := NewView(d, segs).WriteAt([]byte(tc.data), tc.off)
			if (err != nil) != tc.wantErr {
				t.Errorf("error %v, want one: %v", err, tc.wantErr)
			}
			if !bytes.Equal(d.b, want) {
				t.Errorf("disk %q, want %q", d.b, want)
			}
		})
	}
	if _, err := NewView(&readOnly{}, segs).WriteAt([]byte("a"), 0); err == nil {
		t.Error("a view of a read-only disk took a write")
	}
}

type readOnly struct{}

func (readOnly) ReadAt(p []byte, off int64) (int, error) { return len(p), nil }
func (readOnly) Size() int64                             { return 64 }
