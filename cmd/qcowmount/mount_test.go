package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

func TestSplitOptions(t *testing.T) {
	tests := []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{"allow_other"}, []string{"allow_other"}},
		{[]string{"allow_other,uid=1000", "gid=5"}, []string{"allow_other", "uid=1000", "gid=5"}},
		{[]string{" a , ,b"}, []string{"a", "b"}},
	}
	for _, tc := range tests {
		if got := splitOptions(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("splitOptions(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	tests := map[string]string{
		`/mnt/a\040b`:  "/mnt/a b",
		`/plain`:       "/plain",
		`/tab\011here`: "/tab\there",
		`/end\04`:      `/end\04`,
	}
	for in, want := range tests {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHumanSize(t *testing.T) {
	tests := map[int64]string{
		0: "0 B", 512: "512 B", 999: "999 B", 1000: "0.977 KiB", 1 << 10: "1 KiB", 1536: "1.5 KiB",
		1048064: "1 MiB", 64 << 20: "64 MiB", 1000 << 20: "0.977 GiB", 1072693248: "0.999 GiB",
		1 << 30: "1 GiB", 1 << 40: "1 TiB", 1 << 62: "4 EiB",
	}
	for in, want := range tests {
		if got := humanSize(in); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", in, got, want)
		}
	}
	if got := vmClock(time.Hour + 2*time.Minute + 3*time.Second + 4*time.Millisecond); got != "0001:02:03.004" {
		t.Errorf("vmClock = %q", got)
	}
}

// TestHumanSizeMatchesQemuImg checks the unit boundaries against qemu-img
// info's "virtual size" line.
func TestHumanSizeMatchesQemuImg(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	for _, size := range []int64{512, 1024, 1048064, 1000 << 20, 1023 << 20, 1072693248, 1 << 30, 999 << 30, 1000 << 30} {
		path := filepath.Join(t.TempDir(), "img.qcow2")
		qemutest.Create(t, path, "qcow2", strconv.FormatInt(size, 10))
		out := qemutest.Run(t, "qemu-img", "info", path)
		want := fmt.Sprintf("virtual size: %s (%d bytes)", humanSize(size), size)
		if !strings.Contains(out, want+"\n") {
			t.Errorf("qemu-img info says\n%s\nwe would say %q", out, want)
		}
	}
}

func TestPrintable(t *testing.T) {
	tests := map[string]string{
		"plain.qcow2":              "plain.qcow2",
		"caf\u00e9 \u2603":         "caf\u00e9 \u2603",
		"evil\x1b]0;pwned\x07name": `evil\x1b]0;pwned\aname`,
		"csi\u009b31m":             `csi\u009b31m`,
		"new\nline\ttab":           `new\nline\ttab`,
		"bad\xffutf8":              `bad\xffutf8`,
		`back\slash`:               `back\slash`,
		"real \ufffd replacement":  "real \ufffd replacement",
	}
	for in, want := range tests {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}
