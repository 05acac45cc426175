package main

import (
	"slices"
	"testing"
	"time"
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
	tests := map[int64]string{0: "0 B", 512: "512 B", 1 << 10: "1 KiB", 1536: "1.5 KiB", 64 << 20: "64 MiB", 1 << 40: "1 TiB"}
	for in, want := range tests {
		if got := humanSize(in); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", in, got, want)
		}
	}
	if got := vmClock(time.Hour + 2*time.Minute + 3*time.Second + 4*time.Millisecond); got != "0001:02:03.004" {
		t.Errorf("vmClock = %q", got)
	}
}
