package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/qcowmount/qcowmount/integration/internal/proc"
)

// tool is a way to expose an image's guest disk as a file.
type tool struct {
	name  string
	peer  bool // a tool people use today, as opposed to ours or the ceiling
	reads func(benchImage) bool
	// mount exposes img under dir and returns once the file is readable.
	mount func(img benchImage, dir string) (*mounted, error)
}

// mounted is a running mount: the file to read and its serving process.
type mounted struct {
	file string
	pid  int
	stop func() error
}

// noFUSE is the kernel ceiling: the raw disk file read directly.
const noFUSE = "raw file, no FUSE (kernel ceiling)"

func tools(ours, raw string) []tool {
	all := func(benchImage) bool { return true }
	ceiling := func(img benchImage) bool { return img.ceilings }
	return []tool{
		{name: "qcowmount (ours)", reads: all, mount: func(img benchImage, dir string) (*mounted, error) {
			args := []string{img.path, dir}
			if img.keyFile != "" {
				args = append(args, "--key-file", img.keyFile)
			}
			if err := sh(ours, args...); err != nil {
				return nil, err
			}
			return fuseDirMount(dir, filepath.Join(dir, "disk.raw"), ours)
		}},
		{name: "qemu-storage-daemon", peer: true, reads: all, mount: func(img benchImage, dir string) (*mounted, error) {
			file := filepath.Join(dir, "export")
			if err := os.WriteFile(file, nil, 0o644); err != nil {
				return nil, err
			}
			qcow2 := "driver=qcow2,node-name=disk,read-only=on,file=file"
			var secret []string
			if img.keyFile != "" {
				secret = []string{"--object", "secret,id=s0,file=" + img.keyFile}
				qcow2 += ",encrypt.format=luks,encrypt.key-secret=s0"
			}
			cmd := exec.Command("qemu-storage-daemon", append(secret,
				"--blockdev", "driver=file,node-name=file,read-only=on,filename="+img.path,
				"--blockdev", qcow2,
				"--export", "type=fuse,id=exp,node-name=disk,writable=off,mountpoint="+file)...)
			return processMount(cmd, file, func() error { return cmd.Process.Signal(syscall.SIGTERM) })
		}},
		// libqcow reads neither zstd nor LUKS.
		{name: "libqcow qcowmount", peer: true, reads: func(img benchImage) bool { return img.compression != "zstd" && img.keyFile == "" },
			mount: func(img benchImage, dir string) (*mounted, error) {
				if err := sh("/usr/bin/qcowmount", img.path, dir); err != nil {
					return nil, err
				}
				return fuseDirMount(dir, filepath.Join(dir, "qcow1"), "/usr/bin/qcowmount")
			}},
		{name: noFUSE, reads: ceiling, mount: func(img benchImage, dir string) (*mounted, error) {
			return &mounted{file: img.raw, stop: func() error { return nil }}, nil
		}},
		{name: "raw disk, our FUSE layer (FUSE ceiling)", reads: ceiling, mount: func(img benchImage, dir string) (*mounted, error) {
			self, err := os.Executable()
			if err != nil {
				return nil, err
			}
			cmd := exec.Command(self, "-serve-raw", raw, dir)
			return processMount(cmd, filepath.Join(dir, "disk.raw"), func() error { return sh("fusermount3", "-u", dir) })
		}},
	}
}

// fuseDirMount waits for a daemonized mount's file and finds its server.
func fuseDirMount(dir, file, binary string) (*mounted, error) {
	if err := waitReadable(file); err != nil {
		return nil, err
	}
	pid := proc.Find(binary, dir)
	if pid == 0 {
		return nil, fmt.Errorf("no %s process serves %s", binary, dir)
	}
	return &mounted{file: file, pid: pid, stop: func() error {
		if err := sh("fusermount3", "-u", dir); err != nil {
			return err
		}
		return waitExit(pid)
	}}, nil
}

// processMount starts a server that stays in the foreground.
func processMount(cmd *exec.Cmd, file string, stop func() error) (*mounted, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := waitReadable(file); err != nil {
		cmd.Process.Kill()
		<-exited
		return nil, fmt.Errorf("%v: %s", err, out.String())
	}
	return &mounted{file: file, pid: cmd.Process.Pid, stop: func() error {
		if err := stop(); err != nil {
			return err
		}
		select {
		case <-exited:
			return nil
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			return fmt.Errorf("%s did not exit", cmd.Path)
		}
	}}, nil
}

// waitReadable waits until the first 4 KiB of file can be read through a
// FUSE mount (the file's device differs from its directory's).
func waitReadable(file string) error {
	deadline := time.Now().Add(30 * time.Second)
	buf := make([]byte, 4096)
	for time.Now().Before(deadline) {
		var st, dst syscall.Stat_t
		if syscall.Stat(file, &st) == nil && syscall.Stat(filepath.Dir(file), &dst) == nil && (st.Dev != dst.Dev || st.Size > 0) {
			if f, err := os.Open(file); err == nil {
				_, err := f.ReadAt(buf, 0)
				f.Close()
				if err == nil {
					return nil
				}
			}
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("%s did not become readable", file)
}

func waitExit(pid int) error {
	for range 2000 {
		if !proc.Alive(pid) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("process %d did not exit", pid)
}
