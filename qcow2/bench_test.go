package qcow2_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// benchImages makes a 64 MiB disk whose 64 KiB clusters are half random,
// half zeros (about 2:1 compressible, like a used file system), as
// uncompressed, zlib and zstd qcow2 images.
func benchImages(b *testing.B) map[string]string {
	qemutest.Require(b, "qemu-img")
	dir := b.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	const size = 64 << 20
	for off := int64(0); off < size; off += 64 << 10 {
		qemutest.WriteFile(b, raw, off, qemutest.Pattern(byte(off>>16), 32<<10))
	}
	if err := os.Truncate(raw, size); err != nil {
		b.Fatal(err)
	}
	images := map[string]string{}
	for kind, args := range map[string][]string{
		"uncompressed": nil,
		"zlib":         {"-c", "-o", "compression_type=zlib"},
		"zstd":         {"-c", "-o", "compression_type=zstd"},
	} {
		p := filepath.Join(dir, kind+".qcow2")
		qemutest.Run(b, "qemu-img", append(append([]string{"convert", "-q", "-f", "raw", "-O", "qcow2"}, args...), raw, p)...)
		images[kind] = p
	}
	return images
}

// BenchmarkRead measures the reader alone, without FUSE: whole-disk
// sequential reads in 1 MiB requests (as FUSE sends them) and random 4 KiB
// reads, on each kind of image.
func BenchmarkRead(b *testing.B) {
	images := benchImages(b)
	for _, kind := range []string{"uncompressed", "zlib", "zstd"} {
		img, err := qcow2.Open(images[kind], qcow2.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Run("sequential-1MiB/"+kind, func(b *testing.B) {
			buf := make([]byte, 1<<20)
			b.SetBytes(img.Size())
			b.ReportAllocs()
			for b.Loop() {
				for off := int64(0); off < img.Size(); off += int64(len(buf)) {
					if _, err := img.ReadAt(buf, off); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		b.Run("random-4KiB/"+kind, func(b *testing.B) {
			buf := make([]byte, 4096)
			r := rand.New(rand.NewPCG(1, 2))
			b.SetBytes(4096)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := img.ReadAt(buf, r.Int64N(img.Size()/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
		img.Close()
	}
}
