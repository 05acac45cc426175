package decompress

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"testing"

	"github.com/klauspost/compress/flate"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// referenceInflate decodes with klauspost's streaming flate, the decoder
// ours is checked against: n bytes, or an error.
func referenceInflate(dst, src []byte) error {
	_, err := io.ReadFull(flate.NewReader(bytes.NewReader(src)), dst)
	return err
}

// streams returns deflate streams of varied data at every level, with
// the data they hold.
func streams(t testing.TB) (datas, comps [][]byte) {
	r := rand.New(rand.NewPCG(1, 2))
	texts := [][]byte{
		bytes.Repeat([]byte("abc"), 30000),
		make([]byte, 70000),
		randomBytes(r, 70000),
		mixed(r, 70000),
		mixed(r, 1000),
		{},
	}
	for _, data := range texts {
		for _, level := range []int{flate.NoCompression, flate.BestSpeed, 3, flate.DefaultCompression, flate.BestCompression, flate.HuffmanOnly} {
			var b bytes.Buffer
			w, err := flate.NewWriter(&b, level)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(data)
			w.Close()
			datas = append(datas, data)
			comps = append(comps, b.Bytes())
		}
	}
	return datas, comps
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// mixed is text-like data with repeats at all distances, runs and noise.
func mixed(r *rand.Rand, n int) []byte {
	b := make([]byte, 0, n)
	words := []string{"qcow2 ", "cluster ", "the ", "guest ", "disk ", "\n", "0123456789", "\x00\x00\x00\x00"}
	for len(b) < n {
		switch r.IntN(4) {
		case 0:
			b = append(b, words[r.IntN(len(words))]...)
		case 1:
			if len(b) > 10 {
				d := 1 + r.IntN(min(len(b), 30000))
				l := 3 + r.IntN(200)
				for range l {
					b = append(b, b[len(b)-d])
				}
			}
		case 2:
			b = append(b, bytes.Repeat([]byte{byte(r.Uint32())}, r.IntN(300))...)
		default:
			b = append(b, randomBytes(r, r.IntN(50))...)
		}
	}
	return b[:n]
}

// TestDeflateDecoderMatchesFlate decodes every stream with a buffer as long
// as the data, shorter (decoding stops once full) and longer (an error).
func TestDeflateDecoderMatchesFlate(t *testing.T) {
	datas, comps := streams(t)
	var d deflateDecoder
	for i, c := range comps {
		data := datas[i]
		for _, n := range []int{len(data), len(data) / 2, 1, len(data) + 1} {
			if n == 0 {
				continue
			}
			dst := make([]byte, n)
			err := d.decode(dst, append(c, 0xde, 0xad)) // trailing bytes are ignored
			if n > len(data) {
				if err == nil {
					t.Fatalf("stream %d: decoding %d bytes of %d: no error", i, n, len(data))
				}
				continue
			}
			if err != nil {
				t.Fatalf("stream %d, %d of %d bytes: %v", i, n, len(data), err)
			}
			if !bytes.Equal(dst, data[:n]) {
				t.Fatalf("stream %d, %d of %d bytes: wrong output", i, n, len(data))
			}
		}
		if len(data) > 0 {
			if err := d.decode(make([]byte, len(data)), c[:len(c)/2]); err == nil {
				t.Fatalf("stream %d cut in half: no error", i)
			}
		}
	}
}

// zlibInflate asks C zlib (through Python), which QEMU uses with window
// bits -12, to fill n bytes from src: the bytes, or nil if it fails.
func zlibInflate(t *testing.T, src []byte, n int) []byte {
	t.Helper()
	qemutest.Require(t, "python3")
	script := fmt.Sprintf(`
import sys, zlib
d = zlib.decompressobj(-12)
try:
    out = d.decompress(sys.stdin.buffer.read(), %d)
except zlib.error:
    sys.exit(3)
if len(out) < %d:
    sys.exit(3)
sys.stdout.buffer.write(out)
`, n, n)
	cmd := exec.Command("python3", "-c", script)
	cmd.Stdin = bytes.NewReader(src)
	out, err := cmd.Output()
	if err != nil {
		return nil
	}
	return out
}

// FuzzDeflateDecoder checks our decoder on arbitrary input: it never
// panics; where klauspost's flate agrees with it, fine; where they
// disagree, C zlib, QEMU's decoder, decides.
func FuzzDeflateDecoder(f *testing.F) {
	_, comps := streams(f)
	for _, c := range comps {
		f.Add(c, uint16(4096))
	}
	f.Fuzz(func(t *testing.T, src []byte, n uint16) {
		want := make([]byte, int(n)+1)
		theirs := referenceInflate(want, src)
		got := make([]byte, int(n)+1)
		var d deflateDecoder
		ours := d.decode(got, src)
		if (theirs == nil) == (ours == nil) && (ours != nil || bytes.Equal(got, want)) {
			return
		}
		z := zlibInflate(t, src, len(got))
		switch {
		case z == nil && ours != nil:
		case errors.Is(ours, errDeflateBomb): // refused on purpose, where zlib takes its time
		case z != nil && ours == nil && bytes.Equal(z, got):
		default:
			t.Fatalf("zlib says %v bytes, we say %v", z != nil, ours)
		}
	})
}

func BenchmarkDeflateDecoders(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	data := mixed(r, 65536)
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, 6)
	w.Write(data)
	w.Close()
	src := buf.Bytes()
	dst := make([]byte, len(data))
	b.Run("ours", func(b *testing.B) {
		var d deflateDecoder
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if err := d.decode(dst, src); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("klauspost", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if err := referenceInflate(dst, src); err != nil {
				b.Fatal(err)
			}
		}
	})
}
