// Package guest finds what lies inside a guest disk: its partition table
// (GPT or MBR), the LVM2 logical volumes on its physical volumes, and the
// file systems they hold, by signature. It reads the disk through an
// io.ReaderAt with a size (a *qcow2.Image is one) and knows nothing of the
// image format around it:
//
//	layout, err := guest.Scan(img)
//	if err != nil {
//		return err // only I/O fails a scan
//	}
//	for _, p := range layout.Partitions {
//		fmt.Println(p.FileName(), p.FS.Type) // p.View(img) reads it
//	}
//	for _, v := range layout.Volumes {
//		fmt.Println(v.FileName(), v.Unreadable) // v.View(img) reads it
//	}
//
// A guest disk is as untrusted as the image that carries it: every offset
// and count read from it is bounded before use, and a damaged table or
// entry is left out with a Problem saying why, never trusted.
package guest

import (
	"errors"
	"fmt"
	"io"
)

// Disk is a guest disk: its bytes and its size.
type Disk interface {
	io.ReaderAt
	Size() int64
}

// A Partition is an entry of the partition table.
type Partition struct {
	Number int        `json:"number"` // as the kernel numbers it: the GPT slot, or MBR 1-4 and logical 5 on
	Start  int64      `json:"start"`  // in bytes from the start of the disk
	Size   int64      `json:"size"`   // in bytes
	Type   string     `json:"type"`   // by name, or its GUID / hex code
	Name   string     `json:"name,omitempty"`
	FS     FileSystem `json:"file-system"`
}

// FileName is the name the partition's file takes beside disk.raw.
func (p Partition) FileName() string { return fmt.Sprintf("p%d.raw", p.Number) }

// Layout is what Scan found on a disk.
type Layout struct {
	Table      string      `json:"partition-table,omitempty"` // "gpt", "mbr", or "" for none
	Partitions []Partition `json:"partitions,omitempty"`
	Volumes    []Volume    `json:"lvm-volumes,omitempty"`
	FS         FileSystem  `json:"file-system"` // of the whole disk, when it has no table
	// Problems lists what was left out and why: damaged tables and
	// entries, volumes that cannot be exposed.
	Problems []string `json:"problems,omitempty"`
}

// sectorSize is the logical sector size partition tables are read with;
// GPT disks of 4096-byte sectors are found too.
const sectorSize = 512

// Scan reads the partition table of d, the file system on each partition
// (or on the whole disk when it has no table), and the LVM2 logical
// volumes on the physical volumes found. Only an I/O error fails it; what
// is damaged is left out and listed in Problems.
func Scan(d Disk) (*Layout, error) {
	l := &Layout{}
	if err := l.readTable(d); err != nil {
		return nil, err
	}
	var pvs []pvArea
	if len(l.Partitions) == 0 {
		fs, err := Identify(d, 0, d.Size())
		if err != nil {
			return nil, err
		}
		l.FS = fs
		if fs.Type == "LVM2_member" {
			pvs = append(pvs, pvArea{0, d.Size(), "the whole disk"})
		}
	}
	for i := range l.Partitions {
		p := &l.Partitions[i]
		fs, err := Identify(d, p.Start, p.Size)
		if err != nil {
			return nil, err
		}
		p.FS = fs
		if fs.Type == "LVM2_member" {
			pvs = append(pvs, pvArea{p.Start, p.Size, "partition " + p.FileName()})
		}
	}
	if len(pvs) > 0 {
		if err := l.readLVM(d, pvs); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// readAt reads exactly len(p) bytes at off; a read past the end of the
// disk is io.ErrUnexpectedEOF, which callers treat as damage.
func readAt(d Disk, p []byte, off int64) error {
	if off < 0 || off > d.Size()-int64(len(p)) {
		return io.ErrUnexpectedEOF
	}
	n, err := d.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// damaged is a damaged structure on the disk: the scan leaves it out and
// says why, where an I/O error fails the scan.
type damaged string

func (e damaged) Error() string { return string(e) }

func damage(format string, args ...any) error { return damaged(fmt.Sprintf(format, args...)) }

// isDamage tells damage, including a structure that runs off the end of
// the disk, from an I/O error.
func isDamage(err error) bool {
	var d damaged
	return errors.As(err, &d) || errors.Is(err, io.ErrUnexpectedEOF)
}

func (l *Layout) problem(format string, args ...any) {
	l.Problems = append(l.Problems, fmt.Sprintf(format, args...))
}
