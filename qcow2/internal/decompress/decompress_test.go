package decompress

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

func TestDecompressors(t *testing.T) {
	const cluster = 4096
	data := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz"), 200)[:cluster]
	half, double := data[:cluster/2], append(append([]byte{}, data...), data...)
	garbage := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 100)
	tests := []struct {
		name    string
		fn      func(dst, src []byte) error
		src     []byte
		wantErr string
	}{
		{"deflate", Deflate, deflateRaw(t, data), ""},
		{"deflate with trailing bytes", Deflate, join(deflateRaw(t, data), garbage), ""},
		{"deflate of more than a cluster", Deflate, deflateRaw(t, double), ""},
		{"deflate of less than a cluster", Deflate, deflateRaw(t, half), "ends after 2048 of 4096"},
		{"deflate cut short", Deflate, deflateRaw(t, data)[:20], "ends after"},
		{"deflate garbage", Deflate, garbage, "corrupt"},
		{"deflate empty", Deflate, nil, "ends after 0"},
		{"zstd", Zstd, zstdFrame(t, data), ""},
		{"zstd with trailing bytes", Zstd, join(zstdFrame(t, data), garbage), ""},
		{"zstd with checksum", Zstd, zstdFrame(t, data, zstd.WithEncoderCRC(true)), ""},
		{"zstd in two frames", Zstd, join(zstdFrame(t, half), zstdFrame(t, data[cluster/2:])), ""},
		{"zstd after a skippable frame", Zstd, join([]byte{0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 9, 9}, zstdFrame(t, data)), ""},
		{"zstd of more than a cluster", Zstd, zstdFrame(t, double), "more than a cluster"},
		{"zstd of less than a cluster", Zstd, zstdFrame(t, half), "after 2048 of 4096"},
		{"zstd cut short", Zstd, zstdFrame(t, data)[:30], "runs past"},
		{"zstd garbage", Zstd, garbage, "bad frame magic"},
		{"zstd empty", Zstd, nil, "ends before a frame"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := make([]byte, cluster)
			err := tc.fn(dst, tc.src)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(dst, data) {
				t.Fatal("wrong bytes")
			}
		})
	}
}
