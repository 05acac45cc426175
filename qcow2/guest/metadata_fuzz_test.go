package guest

import (
	"testing"
)

// FuzzLVMMetadata parses fuzzed LVM metadata text, the language of
// sections, quoted strings with escapes, numbers and lists: an error or
// a volume group whose numbers are in range, never a panic.
func FuzzLVMMetadata(f *testing.F) {
	f.Add(`vg-1 {
	id = "abc"
	seqno = 3
	status = ["RESIZEABLE", "READ", "WRITE"]
	extent_size = 8192	# 4 MiB
	physical_volumes {
		pv0 { id = "PV0abc-defg" device = "/dev/sda2" pe_start = 2048 pe_count = 100 }
	}
	logical_volumes {
		root {
			status = ["READ", "WRITE", "VISIBLE"]
			segment_count = 2
			segment1 { start_extent = 0 extent_count = 10 type = "striped" stripe_count = 1 stripes = ["pv0", 0] }
			segment2 { start_extent = 10 extent_count = 5 type = "striped" stripe_count = 1 stripes = ["pv0", 20] }
		}
		"pool" { status = ["VISIBLE"] segment1 { type = "thin-pool" extent_count = 1 } }
		hidden { status = ["READ"] }
	}
}
contents = "Text Format Volume Group"
description = "quoted \"escapes\" and \\ backslashes"
version = 1
`)
	f.Fuzz(func(t *testing.T, text string) {
		vg, err := parseMetadata(text)
		if err != nil {
			return
		}
		if vg.extentSectors <= 0 {
			t.Fatalf("extent size %d", vg.extentSectors)
		}
		for _, lv := range vg.lvs {
			if lv.extents < 0 {
				t.Fatalf("volume %s: %d extents", lv.name, lv.extents)
			}
			for _, s := range lv.segments {
				if s.extents <= 0 {
					t.Fatalf("volume %s: segment of %d extents", lv.name, s.extents)
				}
			}
		}
	})
}
