package encryption

import (
	"crypto/rand"
	"testing"
)

// BenchmarkDecrypt decrypts 1 MiB reads (one goroutine's share of a
// large read, below parallelMin it is all one goroutine's) with the
// ciphers QEMU writes most: its default, aes-256-xts-plain64, and CBC.
func BenchmarkDecrypt(b *testing.B) {
	for _, tc := range []struct {
		name string
		spec Spec
	}{
		{"aes-256-xts-plain64", Spec{Cipher: "aes", Mode: "xts", IVGen: "plain64", KeyBytes: 64}},
		{"aes-256-cbc-essiv", Spec{Cipher: "aes", Mode: "cbc", IVGen: "essiv", IVHash: "sha256", KeyBytes: 32}},
		{"aes-128-cbc-plain64 (legacy AES)", Spec{Cipher: "aes", Mode: "cbc", IVGen: "plain64", KeyBytes: 16}},
		{"twofish-256-xts-plain64", Spec{Cipher: "twofish", Mode: "xts", IVGen: "plain64", KeyBytes: 64}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			key := make([]byte, tc.spec.KeyBytes)
			rand.Read(key)
			c, err := NewSectorCipher(tc.spec, key)
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				c.decryptSectors(buf, 1000)
			}
		})
	}
}
