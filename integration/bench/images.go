package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// benchImage is an image to measure.
type benchImage struct {
	name        string
	path        string
	compression string // "", "zlib" or "zstd"
	raw         string // its guest disk as a raw file, for the ceiling
}

const guestSize = "2G"

// customImage prepares an image given on the command line.
func customImage(work, path string) (benchImage, error) {
	raw := filepath.Join(work, "custom.raw")
	if err := sh("qemu-img", "convert", "-O", "raw", path, raw); err != nil {
		return benchImage{}, err
	}
	out, _ := exec.Command("qemu-img", "info", path).Output()
	compression := ""
	if strings.Contains(string(out), "compression type: zstd") {
		compression = "zstd"
	}
	return benchImage{name: filepath.Base(path), path: path, compression: compression, raw: raw}, nil
}

// buildImages makes, once, a 2 GiB GPT disk whose ext4 partition holds
// fill bytes of real files from /usr, and converts it to qcow2 three ways.
func buildImages(work string, fill int64) ([]benchImage, error) {
	raw := filepath.Join(work, "guest.raw")
	if _, err := os.Stat(raw); err != nil {
		fmt.Fprintln(os.Stderr, "building the guest disk ...")
		if err := buildGuest(work, raw, fill); err != nil {
			return nil, err
		}
	}
	images := []benchImage{
		{"uncompressed (64 KiB clusters)", filepath.Join(work, "uncompressed.qcow2"), "", raw},
		{"zlib", filepath.Join(work, "zlib.qcow2"), "zlib", raw},
		{"zstd", filepath.Join(work, "zstd.qcow2"), "zstd", raw},
	}
	for _, img := range images {
		if _, err := os.Stat(img.path); err == nil {
			continue
		}
		fmt.Fprintf(os.Stderr, "converting to %s ...\n", img.name)
		args := []string{"convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=65536"}
		if img.compression != "" {
			args = append(args, "-c", "-o", "compression_type="+img.compression)
		}
		tmp := img.path + ".tmp"
		if err := sh("qemu-img", append(args, raw, tmp)...); err != nil {
			return nil, err
		}
		if err := os.Rename(tmp, img.path); err != nil {
			return nil, err
		}
	}
	return images, nil
}

func buildGuest(work, raw string, fill int64) error {
	staging := filepath.Join(work, "staging")
	os.RemoveAll(staging)
	defer os.RemoveAll(staging)
	if err := linkFiles(staging, fill, "/usr/lib", "/usr/share"); err != nil {
		return err
	}
	tmp := raw + ".tmp"
	os.Remove(tmp)
	if err := sh("truncate", "-s", guestSize, tmp); err != nil {
		return err
	}
	if err := shIn("label: gpt\nstart=2048, type=L\n", "sfdisk", "-q", tmp); err != nil {
		return err
	}
	// The partition starts at 1 MiB and runs to the backup GPT at the end.
	if err := sh("mkfs.ext4", "-q", "-F", "-E", "offset=1048576", "-d", staging, tmp, "2040M"); err != nil {
		return err
	}
	return os.Rename(tmp, raw)
}

// linkFiles hard-links (or copies, across file systems) regular files from
// the source trees into dir until fill bytes are there.
func linkFiles(dir string, fill int64, sources ...string) error {
	var total int64
	done := errors.New("full")
	for _, src := range sources {
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			dst := filepath.Join(dir, strings.TrimPrefix(p, "/"))
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if os.Link(p, dst) != nil {
				b, err := os.ReadFile(p)
				if err != nil {
					return nil
				}
				if err := os.WriteFile(dst, b, 0o644); err != nil {
					return err
				}
			}
			if total += info.Size(); total >= fill {
				return done
			}
			return nil
		})
		if err == done {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func sh(name string, args ...string) error { return shIn("", name, args...) }

func shIn(stdin, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
