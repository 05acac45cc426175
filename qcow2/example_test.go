package qcow2_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/qcowmount/qcowmount/qcow2"
)

// Open a local image and read the guest disk it holds, as any
// io.ReaderAt: here the whole disk, through a SHA-256, the same as
// `qemu-img convert -O raw` and sha256sum give.
func ExampleOpen() {
	img, err := qcow2.Open("../testdata/images/tiny/v3-zlib.qcow2", qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(img, 0, img.Size())); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d bytes, sha256 %x...\n", img.Size(), h.Sum(nil)[:8])
	// Output:
	// 65536 bytes, sha256 7977441cd614b2ff...
}

// New reads an image from any io.ReaderAt: here, one in memory. Info
// describes it as `qemu-img info` does.
func ExampleNew() {
	b, err := os.ReadFile("../testdata/images/tiny/v3-zstd.qcow2")
	if err != nil {
		log.Fatal(err)
	}
	img, err := qcow2.New(bytes.NewReader(b), int64(len(b)), qcow2.Options{Name: "in-memory.qcow2"})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	info, err := img.Info()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.Format, info.VirtualSize, info.ClusterSize)
	// Output:
	// qcow2 65536 512
}

// Check audits the image file as `qemu-img check` does.
func ExampleImage_Check() {
	img, err := qcow2.Open("../testdata/images/tiny/v3-zlib.qcow2", qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	res, err := img.Check()
	if err != nil {
		log.Fatal(err) // only I/O fails a check: findings are in res
	}
	fmt.Println("corruptions:", res.Corruptions, "leaks:", res.Leaks)
	// Output:
	// corruptions: 0 leaks: 0
}

// A damaged image fails with a *FormatError naming the field and where
// it lies in the file.
func ExampleFormatError() {
	b, err := os.ReadFile("../testdata/images/tiny/v3-zlib.qcow2")
	if err != nil {
		log.Fatal(err)
	}
	b[23] = 40 // cluster_bits: far beyond QEMU's 21
	_, err = qcow2.New(bytes.NewReader(b), int64(len(b)), qcow2.Options{Name: "damaged.qcow2"})
	var fe *qcow2.FormatError
	if errors.As(err, &fe) {
		fmt.Printf("%s at %#x\n", fe.Field, fe.Offset)
	}
	// Output:
	// cluster_bits at 0x14
}
