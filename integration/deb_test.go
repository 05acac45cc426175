package integration

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// TestDebianPackage builds the package as `make deb` does, for two kinds
// of version git describe gives, and checks its fields, its files, that
// lintian finds nothing but what the README explains, and that the
// packaged binary runs info on a committed image.
func TestDebianPackage(t *testing.T) {
	qemutest.Require(t, "make", "dpkg-deb", "dpkg", "lintian")
	arch, err := exec.Command("dpkg", "--print-architecture").Output()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		version, debVersion string
		lintian             bool
	}{
		{"v1.2.3-4-gabcdef0", "1.2.3+4+gabcdef0", true},
		{"1234abc-dirty", "0~git+1234abc+dirty", false},
	}
	for _, tc := range tests {
		t.Run(tc.version, func(t *testing.T) {
			out := t.TempDir()
			cmd := exec.Command("make", "--no-print-directory", "-C", "..", "deb", "VERSION="+tc.version, "DEB_OUT="+out)
			b, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("make deb: %v\n%s", err, b)
			}
			deb := filepath.Join(out, "qcowmount_"+tc.debVersion+"_"+strings.TrimSpace(string(arch))+".deb")
			if !strings.Contains(string(b), deb) {
				t.Fatalf("make deb did not say it wrote %s:\n%s", deb, b)
			}

			fields := map[string]string{
				"Package":      "qcowmount",
				"Version":      tc.debVersion,
				"Architecture": strings.TrimSpace(string(arch)),
				"Depends":      "fuse3",
				"Conflicts":    "libqcow-utils",
				"Section":      "otherosfs",
			}
			for field, want := range fields {
				got, err := exec.Command("dpkg-deb", "--field", deb, field).Output()
				if err != nil {
					t.Fatalf("dpkg-deb --field %s: %v", field, err)
				}
				if strings.TrimSpace(string(got)) != want {
					t.Errorf("%s: %q, want %q", field, strings.TrimSpace(string(got)), want)
				}
			}

			root := t.TempDir()
			if b, err := exec.Command("dpkg-deb", "--extract", deb, root).CombinedOutput(); err != nil {
				t.Fatalf("dpkg-deb --extract: %v\n%s", err, b)
			}
			// Each file, and something that shows it is what it says.
			files := map[string]string{
				"usr/share/man/man1/qcowmount.1.gz":                  ".TH",
				"usr/share/bash-completion/completions/qcowmount":    "complete",
				"usr/share/zsh/vendor-completions/_qcowmount":        "#compdef qcowmount",
				"usr/share/fish/vendor_completions.d/qcowmount.fish": "complete -c qcowmount",
				"usr/share/doc/qcowmount/README.md.gz":               "# qcowmount",
				"usr/share/doc/qcowmount/changelog.gz":               "qcowmount (" + tc.debVersion + ")",
				"usr/share/doc/qcowmount/copyright":                  "Go module github.com/hanwen/go-fuse/v2@",
				"usr/share/doc/qcowmount/copyright#ours":             "Files: *\nCopyright: the qcowmount developers\nLicense: Apache-2.0",
			}
			for name, want := range files {
				name, _, _ = strings.Cut(name, "#")
				text := readMaybeGzipped(t, filepath.Join(root, name))
				if !strings.Contains(text, want) {
					t.Errorf("%s does not hold %q", name, want)
				}
			}

			packaged := filepath.Join(root, "usr/bin/qcowmount")
			version, err := exec.Command(packaged, "version").CombinedOutput()
			if err != nil || !strings.Contains(string(version), tc.version) {
				t.Errorf("packaged qcowmount version: %v\n%s\nwant it to name %s", err, version, tc.version)
			}
			info, err := exec.Command(packaged, "info", "../testdata/images/v3-zstd.qcow2").CombinedOutput()
			if err != nil || !strings.Contains(string(info), "virtual size: 256 KiB (262144 bytes)") || !strings.Contains(string(info), "compression type: zstd") {
				t.Errorf("packaged qcowmount info: %v\n%s", err, info)
			}

			if tc.lintian {
				// Lintian exempts Go's static binaries only when it sees
				// a source package that build-depends on golang-go; a
				// lone .deb cannot show that.
				cmd := exec.Command("lintian", "--fail-on", "error,warning", "--suppress-tags", "statically-linked-binary", deb)
				if b, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("lintian: %v\n%s", err, b)
				}
			}
		})
	}
}

// readMaybeGzipped returns a file's text, gunzipped if its name ends in .gz.
func readMaybeGzipped(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(path, ".gz") {
		r, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if b, err = io.ReadAll(r); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	return string(b)
}
