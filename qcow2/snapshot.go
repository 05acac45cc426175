package qcow2

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Snapshot is an entry of the internal snapshot table.
type Snapshot struct {
	ID          string
	Name        string
	Date        time.Time     // when it was taken, by the host's clock
	VMClock     time.Duration // how long the guest had run
	VMStateSize uint64        // bytes of saved VM state (RAM, devices); 0 for disk only
	DiskSize    uint64        // the virtual disk's size then
	ICount      int64         // instructions run; -1 when the entry does not record it
	L1Offset    uint64        // where the snapshot's L1 table lies in the file
	L1Size      uint32        // its entries

	entryOffset int64 // where the entry lies in the file, for errors
	entryLen    int64 // its bytes, padded to 8 as QEMU lays entries out
}

// QEMU reads a snapshot's ID and name as C strings: each ends at its
// first NUL. It compares them whole when it looks a snapshot up, and shows
// them through fixed buffers of 128 and 256 bytes (QEMUSnapshotInfo),
// cutting what is longer; so do we, which also bounds what a table of
// 65536 entries with 64 KiB names costs to list.
const (
	maxSnapshotIDLen   = 127
	maxSnapshotNameLen = 255
)

// cString is b up to its first NUL, as C reads a string.
func cString(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// walkSnapshots reads the snapshot table, whose position parseHeader has
// checked, entry by entry, calling fn for each with the snapshot as QEMU
// shows it and its whole ID and name as QEMU compares them (valid during
// the call): memory stays bounded whatever the table declares. It returns
// how many IDs or names it cut for showing.
func walkSnapshots(path string, f File, h *Header, fileSize int64, fn func(sn Snapshot, id, name []byte) error) (cut int, err error) {
	if h.NbSnapshots == 0 {
		return 0, nil
	}
	limit := min(int64(maxSnapshotTable), fileSize-int64(h.SnapshotsOffset))
	r := bufio.NewReaderSize(io.NewSectionReader(f, int64(h.SnapshotsOffset), limit), int(min(limit, 64<<10)))
	be := binary.BigEndian
	pos := int64(h.SnapshotsOffset)
	var fixed [snapshotHeaderBytes]byte
	rest := make([]byte, 0, 4096)
	short := func(at int64, i uint32, err error) error {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return formatErr(path, "snapshot table", at, "entry %d is cut short: the table runs past the end of the file or %d MiB", i, maxSnapshotTable>>20)
		}
		return fmt.Errorf("reading the snapshot table of %s at %#x: %w", f.Name(), at, err)
	}
	for i := uint32(0); i < h.NbSnapshots; i++ {
		at := pos
		if _, err := io.ReadFull(r, fixed[:]); err != nil {
			return cut, short(at, i, err)
		}
		extraLen := be.Uint32(fixed[36:])
		if extraLen > maxSnapshotExtra {
			return cut, formatErr(path, "snapshot extra_data_size", at+36, "%d exceeds %d", extraLen, maxSnapshotExtra)
		}
		idLen, nameLen := int(be.Uint16(fixed[12:])), int(be.Uint16(fixed[14:]))
		n := int(extraLen) + idLen + nameLen
		if cap(rest) < n {
			rest = make([]byte, n)
		}
		rest = rest[:n]
		if _, err := io.ReadFull(r, rest); err != nil {
			return cut, short(at, i, err)
		}
		sn := Snapshot{
			L1Offset:    be.Uint64(fixed[0:]),
			L1Size:      be.Uint32(fixed[8:]),
			Date:        time.Unix(int64(be.Uint32(fixed[16:])), int64(be.Uint32(fixed[20:]))),
			VMClock:     time.Duration(be.Uint64(fixed[24:])),
			VMStateSize: uint64(be.Uint32(fixed[32:])),
			DiskSize:    h.Size,
			ICount:      -1,
			entryOffset: at,
		}
		extra := rest[:extraLen]
		if len(extra) >= 8 {
			sn.VMStateSize = be.Uint64(extra)
		}
		if len(extra) >= 16 {
			sn.DiskSize = be.Uint64(extra[8:])
		}
		if len(extra) >= 24 {
			sn.ICount = int64(be.Uint64(extra[16:]))
		}
		id, name := cString(rest[extraLen:int(extraLen)+idLen]), cString(rest[int(extraLen)+idLen:])
		if len(id) > maxSnapshotIDLen || len(name) > maxSnapshotNameLen {
			cut++
		}
		sn.ID = string(id[:min(len(id), maxSnapshotIDLen)])
		sn.Name = string(name[:min(len(name), maxSnapshotNameLen)])
		used := int64(snapshotHeaderBytes + n)
		pad := (8 - used%8) % 8
		sn.entryLen = used + pad
		if err := fn(sn, id, name); err != nil {
			return cut, err
		}
		if _, err := r.Discard(int(pad)); err != nil && i+1 < h.NbSnapshots {
			return cut, short(at, i, err)
		}
		pos += used + pad
	}
	return cut, nil
}

// Snapshots returns the image's internal snapshots, as the table holds
// them now.
func (img *Image) Snapshots() ([]Snapshot, error) {
	var snaps []Snapshot
	_, err := walkSnapshots(img.path, img.file, &img.hdr, img.fileSize, func(sn Snapshot, _, _ []byte) error {
		snaps = append(snaps, sn)
		return nil
	})
	return snaps, err
}

// useSnapshot reads the snapshot table, as QEMU does on open, and turns
// the image's view to the snapshot that key names (checkSnapshots), if
// key is not empty: its L1 table and its disk size.
func (img *Image) useSnapshot(key string) error {
	sn, err := img.checkSnapshots(key)
	if err != nil {
		return err
	}
	h := &img.hdr
	l1Size := uint64(h.L1Size)
	if sn != nil {
		if err := checkTable(img.path, "snapshot L1 table", sn.entryOffset, sn.L1Offset, uint64(sn.L1Size), 8, maxL1Bytes, h.ClusterBits, img.fileSize); err != nil {
			return fmt.Errorf("snapshot %s: %w", sn.ID, err)
		}
		if sn.DiskSize > math.MaxInt64 {
			return img.formatErr("snapshot disk_size", sn.entryOffset+48, "%d exceeds 2^63-1", sn.DiskSize)
		}
		img.l1Offset, l1Size = sn.L1Offset, uint64(sn.L1Size)
		img.size = int64(sn.DiskSize &^ 511)
	}
	img.l1Entries = int64(min(l1Size, h.l1EntriesFor(uint64(img.size))))
	return nil
}

// checkSnapshots reads the whole snapshot table once, as QEMU does on
// open, and returns the snapshot that key names, unless key is empty. The
// lookup is QEMU's (find_snapshot_by_id_or_name): the first snapshot whose
// whole ID is key, else the first whose whole name is key, ID and name
// ending at their first NUL.
func (img *Image) checkSnapshots(key string) (*Snapshot, error) {
	var byID, byName *Snapshot
	var known []string
	cut, err := walkSnapshots(img.path, img.file, &img.hdr, img.fileSize, func(sn Snapshot, id, name []byte) error {
		switch {
		case key == "":
		case byID == nil && string(id) == key:
			byID = &sn
		case byName == nil && string(name) == key:
			byName = &sn
		}
		if len(known) < 20 {
			known = append(known, fmt.Sprintf("%q (%q)", sn.ID, sn.Name))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if cut > 0 {
		img.warnings = append(img.warnings, fmt.Sprintf("%d snapshot IDs or names are longer than QEMU shows (%d and %d bytes): cut to that length, as QEMU does", cut, maxSnapshotIDLen, maxSnapshotNameLen))
	}
	switch {
	case key == "":
		return nil, nil
	case byID != nil:
		return byID, nil
	case byName != nil:
		return byName, nil
	case len(known) == 0:
		return nil, fmt.Errorf("no snapshot %q: the image has no snapshots", key)
	}
	more := ""
	if n := int(img.hdr.NbSnapshots) - len(known); n > 0 {
		more = fmt.Sprintf(" and %d more", n)
	}
	return nil, fmt.Errorf("no snapshot %q; known snapshots: %s%s", key, strings.Join(known, ", "), more)
}
