package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// mountEntry is a line of /proc/self/mountinfo: what is mounted where.
type mountEntry struct {
	target, fstype, source string
}

// mounts reads /proc/self/mountinfo.
func mounts() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		// ID parent major:minor root target options [optional...] - fstype source super-options
		fields := strings.Fields(s.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{
			target: unescapeMountinfo(fields[4]),
			fstype: fields[sep+1],
			source: unescapeMountinfo(fields[sep+2]),
		})
	}
	return out, s.Err()
}

// isMountpoint reports whether something is mounted on dir.
func isMountpoint(dir string) (bool, error) {
	all, err := mounts()
	for _, m := range all {
		if m.target == dir {
			return true, nil
		}
	}
	return false, err
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) the kernel
// writes in mountinfo paths.
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// holders says what keeps a qcowmount mount busy, as the commands that
// release it, in order: file systems mounted from one of its files (a
// loop device on a partition file, fuse2fs) or from a loop device on one
// of them, then those loop devices, then any other process that holds
// one of its files open.
func holders(mountpoint string) []string {
	abs, _ := filepath.Abs(mountpoint)
	inMount := func(path string) bool { return filepath.Dir(path) == abs }
	all, _ := mounts()
	open := openFilesIn(abs)
	var umounts, detach []string
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range loops {
		b, err := os.ReadFile(f)
		if err != nil || !inMount(strings.TrimSpace(string(b))) {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
		for _, m := range all {
			// The device itself, or one of its partitions (/dev/loop0p1).
			if m.source == dev || strings.HasPrefix(m.source, dev+"p") {
				umounts = append(umounts, fmt.Sprintf("umount %s (%s from %s)", shellQuote(m.target), m.fstype, m.source))
			}
		}
		if parts, _ := filepath.Glob(filepath.Dir(filepath.Dir(f)) + "/" + filepath.Base(dev) + "p*"); len(parts) > 0 {
			detach = append(detach, fmt.Sprintf("partx -d %s; losetup -d %s (on %s)", dev, dev, strings.TrimSpace(string(b))))
		} else {
			detach = append(detach, fmt.Sprintf("losetup -d %s (on %s)", dev, strings.TrimSpace(string(b))))
		}
	}
	served := map[int]bool{} // processes found serving a mount of one of our files
	for _, m := range all {
		// fuse2fs and friends name the file they read as their source, as
		// they were given it: absolute, or relative to where they ran,
		// which a process holding that file open tells.
		via, ok := m.source, inMount(m.source)
		if !ok && strings.HasPrefix(m.fstype, "fuse") && !filepath.IsAbs(m.source) {
			for _, h := range open {
				if strings.HasSuffix(h.file, "/"+strings.TrimLeft(filepath.Clean(m.source), "./")) {
					via, ok = h.file, true
					served[h.pid] = true
					break
				}
			}
		}
		if ok {
			umounts = append(umounts, fmt.Sprintf("fusermount -u %s (%s from %s)", shellQuote(m.target), m.fstype, via))
		}
	}
	out := append(umounts, detach...)
	for _, h := range open {
		if !served[h.pid] {
			out = append(out, fmt.Sprintf("process %d (%s) holds %s open", h.pid, h.command, h.file))
		}
	}
	if len(out) == 0 {
		out = append(out, "whatever holds its files open (see fuser -vm "+shellQuote(abs)+")")
	}
	return out
}

// openFile is a file of a mount that a process holds open.
type openFile struct {
	pid     int
	command string
	file    string
}

// openFilesIn lists the files in dir that processes hold open, as far as
// /proc lets this user see.
func openFilesIn(dir string) []openFile {
	var out []openFile
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		target, err := os.Readlink(fd)
		if err != nil || filepath.Dir(target) != dir {
			continue
		}
		procDir := filepath.Dir(filepath.Dir(fd))
		pid, _ := strconv.Atoi(filepath.Base(procDir))
		comm, _ := os.ReadFile(filepath.Join(procDir, "comm"))
		out = append(out, openFile{pid, strings.TrimSpace(string(comm)), target})
	}
	return out
}

// checkFUSEDevice fails, naming the fix, where /dev/fuse is missing.
// Whether the user may use it is fusermount's to say: it is setuid, and
// its reason reaches the user through explainFailure.
func checkFUSEDevice() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("/dev/fuse is missing: load the fuse module (modprobe fuse) or install fuse3 (%v)", err)
	}
	return nil
}

// unmountCommand unmounts mnt as the user running us may: with
// fusermount, which is setuid.
func unmountCommand(mnt string) *exec.Cmd {
	return exec.Command(fusermountBinary(), "-u", mnt)
}

// fusermountBinary is fusermount3, or the old fusermount where only it is
// installed.
func fusermountBinary() string {
	for _, name := range []string{"fusermount3", "fusermount"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return "fusermount3"
}
