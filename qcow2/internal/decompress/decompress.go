// Package decompress fills one qcow2 cluster from its compressed bytes,
// with QEMU's semantics for each of the two compression types: raw
// deflate (zlib, window bits -12) and zstd. It knows nothing of the
// format beyond that: the caller finds the bytes and sizes the cluster.
//
//	err := decompress.Deflate(cluster, compressed)
package decompress

import "sync"

var deflateDecoders = sync.Pool{New: func() any { return new(deflateDecoder) }}

// Deflate decodes raw deflate (QEMU writes it without a zlib header) until
// dst is full. Like QEMU, more data than dst holds is not an error: the
// stream just stops being read; less is.
func Deflate(dst, src []byte) error {
	d := deflateDecoders.Get().(*deflateDecoder)
	defer deflateDecoders.Put(d)
	return d.decode(dst, src)
}
