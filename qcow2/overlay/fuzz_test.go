package overlay

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// memBase is a raw disk in memory beneath a fuzzed overlay.
type memBase struct{ *bytes.Reader }

func (m memBase) Name() string { return "base.raw" }

// baseResolver gives the chain the base for the overlay's backing name.
type baseResolver struct{ base memBase }

func (r baseResolver) Resolve(from, name, what string) (qcow2.File, int64, string, error) {
	return r.base, r.base.Size(), name, nil
}

// FuzzWrites applies a fuzzed sequence of writes, zero writes and syncs
// to an overlay of 512-byte to 64 KiB clusters over a fixed 1 MiB disk,
// and checks it against the writes applied in memory: read back as it is
// written, after Close by the reader over the overlay's file, whose Check
// must find it consistent. Each op is 6 bytes: kind, offset (3), length
// (2, in bytes, up to 64 KiB).
func FuzzWrites(f *testing.F) {
	f.Add(uint8(0), []byte{0, 0, 0, 0, 0x10, 0})
	f.Add(uint8(3), []byte{0, 0, 1, 0x20, 0xff, 0xff, 1, 0x0f, 0xff, 0xff, 0x01, 0x00, 2, 0, 0, 0, 0, 0})
	f.Add(uint8(7), []byte{1, 0x08, 0, 0, 0, 0x40, 0, 0x07, 0xff, 0xf0, 0x12, 0x34, 3, 0, 0, 0, 0, 0})
	const size = 1 << 20
	raw := qemutest.Pattern(1, size)
	f.Fuzz(func(t *testing.T, bits uint8, ops []byte) {
		if len(ops) > 6*64 {
			return
		}
		clusterBits := minClusterBits + uint32(bits)%(DefaultClusterBits-minClusterBits+1)
		base := memBase{bytes.NewReader(raw)}
		rec := &recorder{}
		o, err := build(rec, base, Backing{"base.raw", "raw"}, Options{ClusterBits: clusterBits, TableCacheSize: 2 << clusterBits, CommitInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		model := bytes.Clone(raw)
		for i := 0; i+6 <= len(ops); i += 6 {
			op := ops[i : i+6]
			off := int64(op[1])<<16 | int64(op[2])<<8 | int64(op[3])
			n := int(binary.BigEndian.Uint16(op[4:]))
			switch op[0] % 4 {
			case 0, 1: // data, or zeros
				p := qemutest.Pattern(byte(i), n)
				if op[0]%4 == 1 {
					clear(p)
				}
				m, err := o.WriteAt(p, off)
				want := max(0, min(n, size-int(off)))
				if m != want || (err != nil) != (off > size || want < n) {
					t.Fatalf("op %d: write of %d at %d: %d, %v", i/6, n, off, m, err)
				}
				if m > 0 {
					copy(model[off:], p[:m])
				}
			case 2:
				if err := o.Sync(); err != nil {
					t.Fatal(err)
				}
			case 3: // read back a range
				p := make([]byte, n)
				m, _ := o.ReadAt(p, min(off, size))
				if off = min(off, size); !bytes.Equal(p[:m], model[off:off+int64(m)]) {
					t.Fatalf("op %d: read of %d at %d differs from what was written", i/6, n, off)
				}
			}
		}
		if err := o.Close(); err != nil {
			t.Fatal(err)
		}
		img, err := qcow2.New(bytes.NewReader(rec.data), int64(len(rec.data)), qcow2.Options{Name: "overlay.qcow2", Resolver: baseResolver{base}})
		if err != nil {
			t.Fatalf("opening the overlay: %v", err)
		}
		defer img.Close()
		res, err := img.Check()
		if err != nil || res.Corruptions > 0 || res.CheckErrors > 0 || res.Leaks > 0 {
			t.Fatalf("check: %v %+v", err, res)
		}
		got := make([]byte, size)
		if _, err := img.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("the reader reads the closed overlay otherwise than written, first at %d", qemutest.FirstDiff(got, model))
		}
	})
}
