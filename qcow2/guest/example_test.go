package guest_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/guest"
)

// memDisk is a guest disk in memory; a *qcow2.Image is one too.
type memDisk struct{ *bytes.Reader }

func (d memDisk) Size() int64 { return d.Reader.Size() }

// Scan finds the partition table, the partitions and what they hold;
// View reads one partition as a disk of its own.
func ExampleScan() {
	disk := make([]byte, 4<<20)
	// An MBR with one Linux partition from sector 2048, 4096 sectors long.
	entry := disk[446:]
	entry[4] = 0x83
	binary.LittleEndian.PutUint32(entry[8:], 2048)
	binary.LittleEndian.PutUint32(entry[12:], 4096)
	disk[510], disk[511] = 0x55, 0xaa
	copy(disk[2048*512:], "hello from p1")

	layout, err := guest.Scan(memDisk{bytes.NewReader(disk)})
	if err != nil {
		log.Fatal(err) // only I/O fails a scan: damage is in layout.Problems
	}
	for _, p := range layout.Partitions {
		fmt.Println(layout.Table, p.FileName(), p.Start, p.Size, p.Type)
		first := make([]byte, 13)
		if _, err := p.View(memDisk{bytes.NewReader(disk)}).ReadAt(first, 0); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s\n", first)
	}
	// Output:
	// mbr p1.raw 1048576 2097152 Linux
	// hello from p1
}

// A *qcow2.Image is a guest disk: Scan finds the LVM volume group on it
// (made by the LVM tools, see testdata/make-images.sh), and a volume's
// View reads the volume as a disk of its own, wherever its extents lie.
func ExampleScan_lvm() {
	img, err := qcow2.Open("testdata/lvm.qcow2", qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	layout, err := guest.Scan(img)
	if err != nil {
		log.Fatal(err)
	}
	for _, v := range layout.Volumes {
		fmt.Println(v.VG, v.Name, v.Size, v.FileName())
	}
	data := layout.Volumes[0].View(img)
	first := make([]byte, 19)
	if _, err := data.ReadAt(first, 0); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", first)
	// Output:
	// vg0 data 2097152 vg0-data.raw
	// vg0 logs 1048576 vg0-logs.raw
	// hello from vg0/data
}
