package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Writes: each tool exposes the guest disk read-write over a fresh
// copy-on-write overlay of the image (ours with --overlay, QEMU's with
// qemu-img create -b), and each measure writes through it. The overlay is
// removed after each measure.

// overlayFile is where a write measure's overlay lives: beside its
// mountpoint, outside it.
func overlayFile(dir string) string { return dir + ".overlay.qcow2" }

func writeTools(ours string) []tool {
	all := func(benchImage) bool { return true }
	return []tool{
		{name: "qcowmount --overlay (ours)", reads: all, mount: func(img benchImage, dir string) (*mounted, error) {
			if err := sh(ours, "--overlay", overlayFile(dir), img.path, dir); err != nil {
				return nil, err
			}
			m, err := fuseDirMount(dir, filepath.Join(dir, "disk.raw"), ours)
			return removingOverlay(m, dir), err
		}},
		{name: "qemu-storage-daemon (writable export)", peer: true, reads: all, mount: func(img benchImage, dir string) (*mounted, error) {
			ov := overlayFile(dir)
			if err := sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", img.path, "-F", "qcow2", ov); err != nil {
				return nil, err
			}
			file := filepath.Join(dir, "export")
			if err := os.WriteFile(file, nil, 0o644); err != nil {
				return nil, err
			}
			cmd := exec.Command("qemu-storage-daemon",
				"--blockdev", "driver=file,node-name=file,filename="+ov,
				"--blockdev", "driver=qcow2,node-name=disk,file=file",
				"--export", "type=fuse,id=exp,node-name=disk,writable=on,mountpoint="+file)
			m, err := processMount(cmd, file, func() error { return cmd.Process.Signal(syscall.SIGTERM) })
			return removingOverlay(m, dir), err
		}},
	}
}

// removingOverlay makes m's stop remove the overlay too.
func removingOverlay(m *mounted, dir string) *mounted {
	if m == nil {
		os.Remove(overlayFile(dir))
		return nil
	}
	stop := m.stop
	m.stop = func() error {
		err := stop()
		os.Remove(overlayFile(dir))
		return err
	}
	return m
}

// writeMetrics are the write measures: sequential 1 MiB writes with a
// final fsync, fio's random 4 KiB writes (buffered with a final fsync,
// and O_DIRECT; 1 and 4 jobs), and tar extracting a tree into the guest's
// ext4 through a loop device, unmount included.
func writeMetrics(tarball string) []metric {
	ms := []metric{{name: fmt.Sprintf("sequential 1 MiB writes, %d MiB, then fsync", seqWriteMiB), unit: "MiB/s", higher: true,
		run: func(m *mounted, img benchImage, o options) (float64, error) { return sequentialWrites(m.file) }}}
	for _, w := range randomWorkloads {
		name := strings.Replace(w.name, "random 4 KiB", "random 4 KiB writes", 1)
		ms = append(ms, metric{name: name, unit: "IOPS", higher: true, run: func(m *mounted, img benchImage, o options) (float64, error) {
			iops, _, err := fioRun(m.file, "randwrite", w.direct, w.jobs, o.seconds)
			return iops, err
		}})
	}
	return append(ms, metric{name: "guest: tar extracted into the ext4 (loop device), unmounted", unit: "MiB/s", higher: true, guest: true,
		run: func(m *mounted, img benchImage, o options) (float64, error) {
			return guestExtract(m.file, o.work, tarball)
		}})
}

// seqWriteMiB is what the sequential measure writes, from the start of
// the disk.
const seqWriteMiB = 512

func sequentialWrites(file string) (float64, error) {
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	start := time.Now()
	for i := range int64(seqWriteMiB) {
		buf[0] = byte(i) // no two blocks the same
		if _, err := f.WriteAt(buf, i<<20); err != nil {
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return seqWriteMiB / time.Since(start).Seconds(), nil
}

// guestExtract mounts the guest's ext4 read-write through a loop device
// on the file, extracts the tarball into it, unmounts (writing back what
// the kernel held), and returns the tarball's MiB per second.
func guestExtract(file, work, tarball string) (float64, error) {
	st, err := os.Stat(tarball)
	if err != nil {
		return 0, err
	}
	out, err := exec.Command("losetup", "-o", strconv.Itoa(guestPartition), "--show", "-f", file).Output()
	if err != nil {
		return 0, fmt.Errorf("losetup: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	defer sh("losetup", "-d", loop)
	dir, err := os.MkdirTemp(work, "guest")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if err := sh("mount", "-t", "ext4", loop, dir); err != nil {
		return 0, err
	}
	mounted := true
	defer func() {
		if mounted {
			sh("umount", dir)
		}
	}()
	start := time.Now()
	if err := sh("tar", "xf", tarball, "-C", dir); err != nil {
		return 0, err
	}
	if err := sh("umount", dir); err != nil {
		return 0, err
	}
	mounted = false
	return float64(st.Size()) / (1 << 20) / time.Since(start).Seconds(), nil
}

// writeTarball makes, once, the tree the extraction measure writes: the
// host's /usr/include and /usr/share/doc.
func writeTarball(work string) (string, error) {
	tarball := filepath.Join(work, "extract.tar")
	if _, err := os.Stat(tarball); err == nil {
		return tarball, nil
	}
	tmp := tarball + ".tmp"
	if err := sh("tar", "cf", tmp, "-C", "/", "usr/include", "usr/share/doc"); err != nil {
		return "", err
	}
	return tarball, os.Rename(tmp, tarball)
}

// writeFigures measures the write tools on img, taking turns measure by
// measure, and returns the table.
func writeFigures(img benchImage, ours string, o options, runs int) (string, error) {
	tarball, err := writeTarball(o.work)
	if err != nil {
		return "", err
	}
	ms := writeMetrics(tarball)
	candidates := writeTools(ours)
	results := make([]figures, len(candidates))
	for i, t := range candidates {
		results[i] = figures{tool: t.name, peer: t.peer, values: map[string]float64{}, errs: map[string]error{}}
	}
	if err := warmImage(img); err != nil {
		return "", err
	}
	for run := 1; run <= runs; run++ {
		for _, mt := range ms {
			for i, t := range candidates {
				fmt.Fprintf(os.Stderr, "writes, run %d of %d: %s: %s ...\n", run, runs, mt.name, t.name)
				measureOnce(t, img, mt, o, &results[i])
			}
		}
	}
	img.name = "writes through a new overlay of " + img.name
	return formatTable(img, ms, results), nil
}
