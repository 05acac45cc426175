package guest

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// View is part of a disk read as a disk of its own: a partition (one
// segment) or a logical volume (its segments in order).
type View struct {
	d    Disk
	segs []Segment
	size int64
}

// NewView returns the disk made of segs of d, which the caller has checked
// lie inside d.
func NewView(d Disk, segs []Segment) *View {
	v := &View{d: d, segs: segs}
	for _, s := range segs {
		v.size += s.Size
	}
	return v
}

// View returns the partition's bytes as a disk.
func (p Partition) View(d Disk) *View { return NewView(d, []Segment{{p.Start, p.Size}}) }

// View returns the volume's bytes as a disk.
func (v Volume) View(d Disk) *View { return NewView(d, v.Segments) }

// Size is the sum of the segments' sizes.
func (v *View) Size() int64 { return v.size }

// ReadAt follows io.ReaderAt: a read that reaches past the end returns
// what there is and io.EOF.
func (v *View) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= v.size {
		if len(p) == 0 && off == v.size {
			return 0, nil
		}
		return 0, io.EOF
	}
	done, rest, err := v.pieces(p, off, func(p []byte, at int64) (int, error) {
		m, err := v.d.ReadAt(p, at)
		if m == len(p) {
			return m, nil
		}
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return m, err
	})
	if err == nil && rest > 0 {
		err = io.EOF
	}
	return done, err
}

// pieces calls fn for each part of p at off that lies in one segment, in
// order, with where on the disk that part lies. It returns the bytes fn
// did, and how many of p lie past the end of the view; it stops where fn
// does less than its part, with fn's error.
func (v *View) pieces(p []byte, off int64, fn func(p []byte, at int64) (int, error)) (done, rest int, err error) {
	for _, s := range v.segs {
		if len(p) == 0 {
			break
		}
		if off >= s.Size {
			off -= s.Size
			continue
		}
		n := min(int64(len(p)), s.Size-off)
		m, err := fn(p[:n], s.Start+off)
		done += m
		if int64(m) < n || err != nil {
			return done, len(p) - m, err
		}
		p, off = p[n:], 0
	}
	return done, len(p), nil
}

// writerDisk is a disk that takes writes: an overlay.
type writerDisk interface {
	io.WriterAt
	Sync() error
}

// errReadOnly is the error of a write to a view of a disk that takes none.
var errReadOnly = errors.New("the disk beneath takes no writes")

// WriteAt writes p at off onto the disk beneath, segment by segment; it
// never writes outside the view: a write that reaches past its end
// writes what fits and fails.
func (v *View) WriteAt(p []byte, off int64) (int, error) {
	w, ok := v.d.(writerDisk)
	if !ok {
		return 0, errReadOnly
	}
	if off < 0 || off > v.size {
		return 0, fmt.Errorf("write at %d: outside the %d bytes of the view", off, v.size)
	}
	done, rest, err := v.pieces(p, off, w.WriteAt)
	if err == nil && rest > 0 {
		err = fmt.Errorf("write of %d bytes: past the end of the view", len(p))
	}
	return done, err
}

// Sync makes the writes to the disk beneath durable.
func (v *View) Sync() error {
	w, ok := v.d.(writerDisk)
	if !ok {
		return errReadOnly
	}
	return w.Sync()
}

// hostRanger is a disk that can say where a range lies in a host file
// (fusefs splices such ranges).
type hostRanger interface {
	HostRange(off int64, n int) (*os.File, int64, bool)
}

// HostRange passes the question on to the disk for a range that lies in
// one segment.
func (v *View) HostRange(off int64, n int) (*os.File, int64, bool) {
	hr, ok := v.d.(hostRanger)
	if !ok {
		return nil, 0, false
	}
	diskOff, ok := v.inOneSegment(off, n)
	if !ok {
		return nil, 0, false
	}
	return hr.HostRange(diskOff, n)
}

// pinRanger is a disk that can lend a range's bytes from its cache
// (a remote image).
type pinRanger interface {
	PinRange(off int64, n int) (bufs [][]byte, release func(), err error)
}

// PinRange passes the question on to the disk for a range that lies in
// one segment; it returns no bytes and no error where it cannot.
func (v *View) PinRange(off int64, n int) (bufs [][]byte, release func(), err error) {
	pr, ok := v.d.(pinRanger)
	if !ok {
		return nil, nil, nil
	}
	diskOff, ok := v.inOneSegment(off, n)
	if !ok {
		return nil, nil, nil
	}
	return pr.PinRange(diskOff, n)
}

// inOneSegment returns the disk offset of the view's range [off, off+n)
// when all of it lies in one segment.
func (v *View) inOneSegment(off int64, n int) (int64, bool) {
	if off < 0 || n <= 0 {
		return 0, false
	}
	for _, s := range v.segs {
		if off < s.Size {
			return s.Start + off, off+int64(n) <= s.Size
		}
		off -= s.Size
	}
	return 0, false
}

// allocator is a disk that can tell data from holes.
type allocator interface {
	Allocation(off, limit int64) (data bool, n int64, err error)
}

// Allocation passes the question on to the disk, within one segment; a
// disk that cannot tell has data everywhere.
func (v *View) Allocation(off, limit int64) (bool, int64, error) {
	for _, s := range v.segs {
		if off >= s.Size {
			off -= s.Size
			continue
		}
		limit = min(limit, s.Size-off)
		if a, ok := v.d.(allocator); ok {
			return a.Allocation(s.Start+off, limit)
		}
		return true, limit, nil
	}
	return false, 0, io.EOF
}
