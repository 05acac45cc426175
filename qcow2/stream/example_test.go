package stream_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/stream"
)

// Hash a whole disk: data pieces are hashed as read, holes as the zeros
// they read as, without reading them.
func ExampleRun() {
	img, err := qcow2.Open("../../testdata/images/tiny/v3-zlib.qcow2", qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	h := sha256.New()
	zeros := make([]byte, 64<<10)
	var data, holes int64
	err = stream.Run(context.Background(), img, stream.Options{}, func(p stream.Piece) error {
		if p.Data != nil {
			data += p.Len
			h.Write(p.Data)
			return nil
		}
		holes += p.Len
		for n := p.Len; n > 0; n -= int64(len(zeros)) {
			h.Write(zeros[:min(n, int64(len(zeros)))])
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("data %d, holes %d, sha256 %x...\n", data, holes, h.Sum(nil)[:8])
	// Output:
	// data 3584, holes 61952, sha256 7977441cd614b2ff...
}

// Export a disk to a sparse raw file: data is written where it lies,
// holes are left unwritten, and the file is cut to the disk's size.
func ExampleRun_export() {
	img, err := qcow2.Open("../../testdata/images/tiny/v3-zlib.qcow2", qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	dir, err := os.MkdirTemp("", "export")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	out, err := os.Create(filepath.Join(dir, "disk.raw"))
	if err != nil {
		log.Fatal(err)
	}
	defer out.Close()
	err = stream.Run(context.Background(), img, stream.Options{}, func(p stream.Piece) error {
		if p.Data == nil {
			return nil
		}
		_, err := out.WriteAt(p.Data, p.Off)
		return err
	})
	if err == nil {
		err = out.Truncate(img.Size())
	}
	if err != nil {
		log.Fatal(err)
	}
	b, err := os.ReadFile(out.Name())
	if err != nil {
		log.Fatal(err)
	}
	sum := sha256.Sum256(b)
	fmt.Printf("%d bytes, sha256 %x...\n", len(b), sum[:8])
	// Output:
	// 65536 bytes, sha256 7977441cd614b2ff...
}
