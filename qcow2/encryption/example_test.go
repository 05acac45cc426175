package encryption_test

import (
	"fmt"
	"log"
	"os"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/encryption"
)

// ParseLUKS reads a LUKS1 header from any io.ReaderAt (here the start of
// the LUKS area of testdata/images/v3-luks.qcow2, which QEMU sized 516
// KiB); Unlock turns a passphrase into the cipher of the payload.
func ExampleParseLUKS() {
	f, err := os.Open("testdata/aes-128-cbc.luks")
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	l, err := encryption.ParseLUKS(f, 516<<10)
	if err != nil {
		log.Fatal(err)
	}
	active := 0
	for _, s := range l.Slots {
		if s.Active {
			active++
		}
	}
	fmt.Println(l.Spec, l.Spec.AlgorithmName(), l.Hash, active, "active slot")

	c, err := l.Unlock([]byte("qcowmount"), 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	sector := make([]byte, encryption.SectorSize) // as read from the payload
	if err := c.Decrypt(sector, 0); err != nil {
		log.Fatal(err)
	}
	_, err = l.Unlock([]byte("guess"), 10*time.Second)
	fmt.Println(err)
	// Output:
	// aes-cbc-plain64 aes-128 sha256 1 active slot
	// no key slot opens with this passphrase
}
