package qcow2

import (
	"bytes"
	"strings"
	"testing"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

func deflateRaw(t *testing.T, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := flate.NewWriter(&b, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func zstdFrame(t *testing.T, data []byte, opts ...zstd.EOption) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(data, nil)
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// expectError checks err against a table case's expected error: none when
// want is empty, else one that says want. It reports whether the case
// expected an error, and so is done.
func expectError(t *testing.T, err error, want string) bool {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatal(err)
		}
		return false
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one saying %q", err, want)
	}
	return true
}

func TestDecompressors(t *testing.T) {
	const cluster = 4096
	data := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz"), 200)[:cluster]
	half, double := data[:cluster/2], append(append([]byte{}, data...), data...)
	garbage := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 100)
	tests := []struct {
		name    string
		fn      decompressFunc
		src     []byte
		wantErr string
	}{
		{"deflate", inflate, deflateRaw(t, data), ""},
		{"deflate with trailing bytes", inflate, join(deflateRaw(t, data), garbage), ""},
		{"deflate of more than a cluster", inflate, deflateRaw(t, double), ""},
		{"deflate of less than a cluster", inflate, deflateRaw(t, half), "ends after 2048 of 4096"},
		{"deflate cut short", inflate, deflateRaw(t, data)[:20], "ends after"},
		{"deflate garbage", inflate, garbage, "corrupt"},
		{"deflate empty", inflate, nil, "ends after 0"},
		{"zstd", unzstd, zstdFrame(t, data), ""},
		{"zstd with trailing bytes", unzstd, join(zstdFrame(t, data), garbage), ""},
		{"zstd with checksum", unzstd, zstdFrame(t, data, zstd.WithEncoderCRC(true)), ""},
		{"zstd in two frames", unzstd, join(zstdFrame(t, half), zstdFrame(t, data[cluster/2:])), ""},
		{"zstd after a skippable frame", unzstd, join([]byte{0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 9, 9}, zstdFrame(t, data)), ""},
		{"zstd of more than a cluster", unzstd, zstdFrame(t, double), "more than a cluster"},
		{"zstd of less than a cluster", unzstd, zstdFrame(t, half), "after 2048 of 4096"},
		{"zstd cut short", unzstd, zstdFrame(t, data)[:30], "runs past"},
		{"zstd garbage", unzstd, garbage, "bad frame magic"},
		{"zstd empty", unzstd, nil, "ends before a frame"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := make([]byte, cluster)
			err := tc.fn(dst, tc.src)
			if expectError(t, err, tc.wantErr) {
				return
			}
			if !bytes.Equal(dst, data) {
				t.Fatal("wrong bytes")
			}
		})
	}
}
