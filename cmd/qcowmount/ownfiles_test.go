//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// asAnotherUser gives path to another user, as a directory or file that
// user made first in a shared /tmp would be; it needs root.
func asAnotherUser(t *testing.T, path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("giving a file to another user needs root")
	}
	if err := os.Lchown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
}

// TestLogDirectoryPlantedByAnotherUser: the fallback log directory is
// used only if it is ours and closed to others; otherwise a fresh one
// beside it, so that nobody can steer the log into a file of theirs or
// of ours through a link, or read it.
func TestLogDirectoryPlantedByAnotherUser(t *testing.T) {
	tests := []struct {
		name  string
		plant func(t *testing.T, dir string)
		used  bool // the planted directory is used
	}{
		{"nothing there", func(*testing.T, string) {}, true},
		{"ours, 0700", func(t *testing.T, dir string) { os.Mkdir(dir, 0o700) }, true},
		{"ours, open to others", func(t *testing.T, dir string) { os.Mkdir(dir, 0o700); os.Chmod(dir, 0o777) }, false},
		{"a symbolic link to a directory of ours", func(t *testing.T, dir string) {
			if err := os.Symlink(t.TempDir(), dir); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"another user's", func(t *testing.T, dir string) { os.Mkdir(dir, 0o700); asAnotherUser(t, dir) }, false},
		{"a file", func(t *testing.T, dir string) { os.WriteFile(dir, nil, 0o600) }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := filepath.Join(t.TempDir(), "qcowmount-1000")
			tc.plant(t, want)
			got, err := ownLogDir(want)
			if err != nil {
				t.Fatal(err)
			}
			if (got == want) != tc.used {
				t.Fatalf("log directory %s, planted %s (used: %v, want %v)", got, want, got == want, tc.used)
			}
			if err := ownDir(got); err != nil {
				t.Fatalf("the log directory is not ours alone: %v", err)
			}
			if !tc.used && !strings.HasPrefix(filepath.Base(got), "qcowmount-1000-") {
				t.Fatalf("the new directory %s does not say whose it is", got)
			}
		})
	}
}

// TestOwnFilesRefuseWhatOthersPlanted: the log, pid and profile files
// are never written through a link, nor into another user's file.
func TestOwnFilesRefuseWhatOthersPlanted(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		plant func(t *testing.T, path string)
		err   string // "" to open
	}{
		{"nothing there", func(*testing.T, string) {}, ""},
		{"a file of ours", func(t *testing.T, p string) { os.WriteFile(p, []byte("old"), 0o600) }, ""},
		{"a symbolic link", func(t *testing.T, p string) { os.Symlink(victim, p) }, "symbolic link: refused"},
		{"another user's file", func(t *testing.T, p string) { os.WriteFile(p, nil, 0o666); asAnotherUser(t, p) }, "belongs to user 65534"},
		{"a directory", func(t *testing.T, p string) { os.Mkdir(p, 0o700) }, "is a directory"},
	}
	for _, tc := range tests {
		for _, appendTo := range []bool{false, true} {
			t.Run(tc.name, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "qcowmount.pid")
				tc.plant(t, path)
				f, err := openOwnFile(path, appendTo, 0o600)
				if tc.err != "" {
					if err == nil || !strings.Contains(err.Error(), tc.err) {
						t.Fatalf("opened (%v), want an error saying %q", err, tc.err)
					}
				} else if err != nil {
					t.Fatal(err)
				} else {
					f.Close()
				}
				if b, _ := os.ReadFile(victim); string(b) != "precious" {
					t.Fatalf("the victim file now holds %q", b)
				}
			})
		}
	}
}
