package decompress

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
	"github.com/qcowmount/qcowmount/qcow2/internal/bufpool"
)

// zstdMaxWindow bounds the memory a hostile frame can make the decoder take;
// a cluster is at most 2 MiB, and QEMU's frames never need more.
const zstdMaxWindow = 8 << 20

var zstdDecoder = func() *zstd.Decoder {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
		zstd.WithDecoderMaxMemory(zstdMaxWindow))
	if err != nil {
		panic(err) // only on invalid options, which are constant
	}
	return d
}()

// Zstd decodes zstd frames, one after another, until dst is exactly full.
// As in QEMU, a frame that would produce more than dst holds, or input that
// ends before dst is full, is an error; bytes after the last frame are not.
func Zstd(dst, src []byte) error {
	produced := 0
	for produced < len(dst) {
		n, skippable, err := zstdFrameLen(src)
		if err != nil {
			return fmt.Errorf("zstd: after %d of %d bytes: %w", produced, len(dst), err)
		}
		if !skippable {
			// Decode into a buffer with slack past the cluster: with room
			// to overrun, the decoder takes its fast copy loops.
			scratch := zstdScratch.Get(len(dst))
			room := scratch[: 0 : len(dst)-produced+zstdSlack]
			out, err := zstdDecoder.DecodeAll(src[:n], room)
			if err == nil && len(out) > len(dst)-produced {
				err = fmt.Errorf("zstd data decompresses to more than a cluster (%d bytes)", len(dst))
			} else if err != nil {
				err = fmt.Errorf("zstd data is corrupt: %w", err)
			}
			copy(dst[produced:], out)
			zstdScratch.Put(scratch)
			if err != nil {
				return err
			}
			produced += len(out)
		}
		src = src[n:]
	}
	return nil
}

// zstdSlack is the room the decoder's fast path wants past its output.
const zstdSlack = 64

// zstdScratch holds decoding buffers by the cluster size they serve, about
// as many of each as a FUSE mount has reads in flight (12 in the
// background and the readers). QEMU's clusters are at most 2 MiB.
var zstdScratch = bufpool.NewClasses(21, zstdSlack, 16)

const (
	zstdMagic         = 0xfd2fb528
	zstdSkippableMask = 0xfffffff0
	zstdSkippableBase = 0x184d2a50
)

// zstdFrameLen returns the length of the frame at the start of src by
// walking its header and block headers, without decoding.
func zstdFrameLen(src []byte) (n int, skippable bool, err error) {
	le := binary.LittleEndian
	if len(src) < 4 {
		return 0, false, errors.New("compressed data ends before a frame")
	}
	magic := le.Uint32(src)
	if magic&zstdSkippableMask == zstdSkippableBase {
		if len(src) < 8 {
			return 0, false, errors.New("skippable frame header is truncated")
		}
		size := uint64(le.Uint32(src[4:]))
		if size > uint64(len(src)-8) {
			return 0, false, errors.New("skippable frame runs past the compressed data")
		}
		return 8 + int(size), true, nil
	}
	if magic != zstdMagic {
		return 0, false, fmt.Errorf("bad frame magic %#08x", magic)
	}
	if len(src) < 5 {
		return 0, false, errors.New("frame header is truncated")
	}
	fhd := src[4]
	singleSegment := fhd&0x20 != 0
	pos := 5
	if !singleSegment {
		pos++ // window descriptor
	}
	pos += [4]int{0, 1, 2, 4}[fhd&3] // dictionary id
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcs == 0 && singleSegment {
		fcs = 1
	}
	pos += fcs
	for {
		if pos+3 > len(src) {
			return 0, false, errors.New("frame runs past the compressed data")
		}
		bh := uint32(src[pos]) | uint32(src[pos+1])<<8 | uint32(src[pos+2])<<16
		pos += 3
		last := bh&1 != 0
		size := int(bh >> 3)
		switch (bh >> 1) & 3 {
		case 0, 2: // raw, compressed
			pos += size
		case 1: // RLE: one byte repeated
			pos++
		default:
			return 0, false, errors.New("reserved block type")
		}
		if pos > len(src) {
			return 0, false, errors.New("frame runs past the compressed data")
		}
		if last {
			break
		}
	}
	if fhd&0x04 != 0 { // content checksum
		pos += 4
		if pos > len(src) {
			return 0, false, errors.New("frame checksum runs past the compressed data")
		}
	}
	return pos, false, nil
}
