//go:build darwin || freebsd

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
)

// isMountpoint reports whether something is mounted on dir: a directory
// on another device than its parent (these systems have no mountinfo).
func isMountpoint(dir string) (bool, error) {
	var st, parent syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return false, err
	}
	if err := syscall.Stat(filepath.Dir(dir), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev, nil
}

// holders says what keeps a mount busy, as far as this system tells.
func holders(mountpoint string) []string {
	abs, _ := filepath.Abs(mountpoint)
	return []string{"whatever holds its files open (see fstat -f " + shellQuote(abs) + " or lsof +D " + shellQuote(abs) + ")"}
}

// checkFUSEDevice fails, naming the fix, where the system's FUSE is not
// installed: macFUSE on macOS, the fusefs module on FreeBSD.
func checkFUSEDevice() error {
	if runtime.GOOS == "darwin" {
		if _, err := os.Stat("/Library/Filesystems/macfuse.fs"); err != nil {
			return fmt.Errorf("macFUSE is not installed (https://macfuse.github.io): mounting needs it; info, check, export and hash work without it")
		}
		return nil
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("/dev/fuse is missing: load the fusefs module (kldload fusefs) (%v)", err)
	}
	return nil
}

// unmountCommand unmounts mnt.
func unmountCommand(mnt string) *exec.Cmd {
	return exec.Command("umount", mnt)
}
