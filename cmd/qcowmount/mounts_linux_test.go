package main

import (
	"strings"
	"testing"
)

func TestExplainFailure(t *testing.T) {
	tests := []struct{ msg, stderr, want string }{
		{"mounting on /m: fusermount exited with code 256\n", "fusermount3: failed to open /dev/fuse: Permission denied\n",
			"mounting on /m: fusermount3: failed to open /dev/fuse: Permission denied: make /dev/fuse usable"},
		{"mounting on /m: fusermount exited with code 256", "fusermount3: option allow_other only allowed if 'user_allow_other' is set in /etc/fuse.conf",
			"add user_allow_other to /etc/fuse.conf"},
		{"mounting on /m: fusermount exited with code 256", "fusermount3: unknown option 'bogus'", "neither qcowmount's"},
		{"image: bad magic", "", "image: bad magic"},
	}
	for _, tc := range tests {
		if got := explainFailure(tc.msg, tc.stderr).Error(); !strings.Contains(got, tc.want) || strings.Contains(got, "code 256") {
			t.Errorf("explainFailure(%q, %q) = %q, want %q", tc.msg, tc.stderr, got, tc.want)
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
