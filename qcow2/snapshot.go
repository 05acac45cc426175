package qcow2

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Snapshot is an entry of the internal snapshot table.
type Snapshot struct {
	ID          string
	Name        string
	Date        time.Time
	VMClock     time.Duration
	VMStateSize uint64
	DiskSize    uint64
	ICount      int64 // -1 when the entry does not record it
	L1Offset    uint64
	L1Size      uint32

	entryOffset int64 // where the entry lies in the file, for errors
}

// readSnapshots reads the snapshot table, whose position parseHeader has
// checked. Each entry is bounded (extra data 1 KiB, names 64 KiB), and so
// is the whole table.
func readSnapshots(f *os.File, h *Header, fileSize int64) ([]Snapshot, error) {
	if h.NbSnapshots == 0 {
		return nil, nil
	}
	limit := min(int64(maxSnapshotTable), fileSize-int64(h.SnapshotsOffset))
	r := bufio.NewReaderSize(io.NewSectionReader(f, int64(h.SnapshotsOffset), limit), 64<<10)
	be := binary.BigEndian
	pos := int64(h.SnapshotsOffset)
	snaps := make([]Snapshot, 0, min(h.NbSnapshots, 1024))
	var fixed [snapshotHeaderBytes]byte
	for i := uint32(0); i < h.NbSnapshots; i++ {
		at := pos
		if _, err := io.ReadFull(r, fixed[:]); err != nil {
			return nil, formatErr("snapshot table", at, "entry %d is cut short (%v): the table runs past the end of the file or %d MiB", i, err, maxSnapshotTable>>20)
		}
		extraLen := be.Uint32(fixed[36:])
		if extraLen > maxSnapshotExtra {
			return nil, formatErr("snapshot extra_data_size", at+36, "%d exceeds %d", extraLen, maxSnapshotExtra)
		}
		idLen, nameLen := int(be.Uint16(fixed[12:])), int(be.Uint16(fixed[14:]))
		rest := make([]byte, int(extraLen)+idLen+nameLen)
		if _, err := io.ReadFull(r, rest); err != nil {
			return nil, formatErr("snapshot table", at, "entry %d is cut short (%v)", i, err)
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
		sn.ID = string(rest[extraLen : int(extraLen)+idLen])
		sn.Name = string(rest[int(extraLen)+idLen:])
		snaps = append(snaps, sn)
		n := int64(snapshotHeaderBytes + len(rest))
		pad := (8 - n%8) % 8
		if _, err := r.Discard(int(pad)); err != nil && i+1 < h.NbSnapshots {
			return nil, formatErr("snapshot table", at, "entry %d is cut short", i)
		}
		pos += n + pad
	}
	return snaps, nil
}

// findSnapshot looks a snapshot up by ID, then by name, as QEMU does.
func findSnapshot(snaps []Snapshot, key string) (*Snapshot, error) {
	for i := range snaps {
		if snaps[i].ID == key {
			return &snaps[i], nil
		}
	}
	for i := range snaps {
		if snaps[i].Name == key {
			return &snaps[i], nil
		}
	}
	known := make([]string, len(snaps))
	for i, sn := range snaps {
		known[i] = fmt.Sprintf("%s (%s)", sn.ID, sn.Name)
	}
	if len(known) == 0 {
		return nil, fmt.Errorf("no snapshot %q: the image has no snapshots", key)
	}
	return nil, fmt.Errorf("no snapshot %q; known snapshots: %s", key, strings.Join(known, ", "))
}
