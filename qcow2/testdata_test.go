package qcow2_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
)

const imagesDir = "../testdata/images"

// TestCommittedImages reads the small images in testdata, made by
// testdata/make-images.sh, and compares their hash with that of QEMU's raw
// output recorded there: the format tests run without QEMU installed.
func TestCommittedImages(t *testing.T) {
	f, err := os.Open(filepath.Join(imagesDir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	n := 0
	for s.Scan() {
		want, name, ok := strings.Cut(s.Text(), "  ")
		if !ok {
			t.Fatalf("bad SHA256SUMS line %q", s.Text())
		}
		n++
		t.Run(name, func(t *testing.T) {
			// The encrypted ones have the passphrase "qcowmount".
			img, err := qcow2.Open(filepath.Join(imagesDir, name), qcow2.Options{Passphrase: passphrases(map[string]string{"": "qcowmount"})})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			h := sha256.New()
			if _, err := io.Copy(h, io.NewSectionReader(img, 0, img.Size())); err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(h.Sum(nil)); got != want {
				t.Fatalf("sha256 of the guest disk is %s, QEMU's is %s", got, want)
			}
		})
	}
	if n == 0 {
		t.Fatal("SHA256SUMS lists no image")
	}
}
