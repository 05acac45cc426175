package encryption

// LegacyAES returns the cipher of QEMU's old qcow and qcow2 encryption
// (crypt_method 1): AES-128-CBC, the IV the sector number (plain64), the
// key the passphrase's first 16 bytes, zero padded. Nothing in the image
// checks the key: a wrong passphrase decrypts to noise.
func LegacyAES(passphrase []byte) *SectorCipher {
	key := make([]byte, 16)
	copy(key, passphrase)
	defer clear(key)
	c, err := NewSectorCipher(Spec{Cipher: "aes", Mode: "cbc", IVGen: "plain64", KeyBytes: 16}, key)
	if err != nil {
		panic(err) // a fixed, valid spec
	}
	return c
}
