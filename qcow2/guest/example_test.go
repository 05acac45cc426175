package guest_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log"

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
