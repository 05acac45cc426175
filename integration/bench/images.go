package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// benchImage is an image to measure.
type benchImage struct {
	name        string
	path        string
	compression string // "", "zlib" or "zstd"
	raw         string // its guest disk as a raw file, for the ceilings
	guest       bool   // a built guest disk: ext4 partition at 1 MiB
	ceilings    bool   // measure the ceilings (once per raw file)
	keyFile     string // the passphrase of an encrypted image
}

const guestSize = "2G"

// preallocatedName is the image made with preallocation=metadata, then
// the sparse guest's data written into it.
const preallocatedName = "preallocated (metadata), mostly unallocated"

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
	return benchImage{name: filepath.Base(path), path: path, compression: compression, raw: raw, ceilings: true}, nil
}

// buildImages makes, once, a 2 GiB GPT disk whose ext4 partition holds
// fill bytes of real files from /usr, converted to qcow2 three ways, and a
// mostly unallocated one (a tenth of the files), as people's fresh VMs are.
func buildImages(work string, fill int64) ([]benchImage, error) {
	full, sparse := filepath.Join(work, "guest.raw"), filepath.Join(work, "sparse.raw")
	for raw, bytes := range map[string]int64{full: fill, sparse: fill / 10} {
		if _, err := os.Stat(raw); err != nil {
			fmt.Fprintf(os.Stderr, "building %s ...\n", raw)
			if err := buildGuest(work, raw, bytes); err != nil {
				return nil, err
			}
		}
	}
	images := []benchImage{
		{"uncompressed (64 KiB clusters)", filepath.Join(work, "uncompressed.qcow2"), "", full, true, true, ""},
		{"uncompressed, mostly unallocated (a tenth of the files)", filepath.Join(work, "sparse.qcow2"), "", sparse, true, true, ""},
		// virt-manager's default: every cluster allocated, most over holes
		// of the host file.
		{preallocatedName, filepath.Join(work, "prealloc.qcow2"), "", sparse, true, false, ""},
		// The same disk as the first: its ceilings hold here too.
		{"zlib", filepath.Join(work, "zlib.qcow2"), "zlib", full, true, false, ""},
		{"zstd", filepath.Join(work, "zstd.qcow2"), "zstd", full, true, false, ""},
		// QEMU's defaults: aes-256-xts-plain64, sha256, PBKDF2 counts for
		// two seconds where it was made. "ready" is then mostly the unlock.
		{"LUKS (QEMU's default aes-256-xts)", filepath.Join(work, "luks.qcow2"), "", full, true, false, filepath.Join(work, "luks.key")},
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
		if img.keyFile != "" {
			if err := os.WriteFile(img.keyFile, []byte("bench passphrase"), 0o600); err != nil {
				return nil, err
			}
			args = append(args, "--object", "secret,id=s0,file="+img.keyFile, "-o", "encrypt.format=luks,encrypt.key-secret=s0")
		}
		tmp := img.path + ".tmp"
		var err error
		if img.name == preallocatedName {
			err = sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata,cluster_size=65536", tmp, guestSize)
			if err == nil {
				err = sh("qemu-img", "convert", "-n", "--target-is-zero", "-f", "raw", "-O", "qcow2", img.raw, tmp)
			}
		} else {
			err = sh("qemu-img", append(args, img.raw, tmp)...)
		}
		// qemu-img 7.2's PBKDF2 calibration fails now and then ("Unable
		// to get accurate CPU usage"): a QEMU bug; another run works.
		for try := 0; err != nil && img.keyFile != "" && strings.Contains(err.Error(), "accurate CPU usage") && try < 100; try++ {
			err = sh("qemu-img", append(args, img.raw, tmp)...)
		}
		if err != nil {
			return nil, err
		}
		if err := os.Rename(tmp, img.path); err != nil {
			return nil, err
		}
	}
	return images, nil
}

// buildGuest makes a GPT disk whose ext4 partition, at 1 MiB, holds fill
// bytes of files, and checks that it does: a machine with a small /usr
// would otherwise give a disk that only claims to be full.
func buildGuest(work, raw string, fill int64) error {
	staging := filepath.Join(work, "staging")
	os.RemoveAll(staging)
	defer os.RemoveAll(staging)
	copied, err := linkFiles(staging, fill, "/usr/lib", "/usr/share")
	if err != nil {
		return err
	}
	if copied < fill {
		return fmt.Errorf("/usr/lib and /usr/share hold only %d MiB of files; the guest disk needs %d MiB (-fill)", copied>>20, fill>>20)
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
	used, err := ext4Used(tmp)
	if err != nil {
		return err
	}
	if used < fill {
		return fmt.Errorf("the guest's ext4 holds %d MiB, less than the %d MiB copied in", used>>20, fill>>20)
	}
	return os.Rename(tmp, raw)
}

// ext4Used returns the bytes in use in the ext4 partition of a guest disk.
func ext4Used(raw string) (int64, error) {
	out, err := exec.Command("dumpe2fs", "-h", fmt.Sprintf("%s?offset=%d", raw, guestPartition)).Output()
	if err != nil {
		return 0, fmt.Errorf("dumpe2fs %s: %v", raw, err)
	}
	fields := map[string]int64{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				fields[k] = n
			}
		}
	}
	return (fields["Block count"] - fields["Free blocks"]) * fields["Block size"], nil
}

// linkFiles hard-links (or copies, across file systems) regular files from
// the source trees into dir until fill bytes are there, and returns how
// many bytes it linked.
func linkFiles(dir string, fill int64, sources ...string) (int64, error) {
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
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
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
