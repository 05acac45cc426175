//go:build !windows

package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// The serving process writes files where the user says (--log-file,
// --pidfile, --cpu-profile), often in a directory others can write to
// (/tmp), and may run as root. It must not write through a link another
// user planted there, nor into a file of theirs (they would read what it
// writes, or have it overwrite something of root's).

// openOwnFile opens path for writing as a file of this user's own: made
// with mode if new, refused if it is a symbolic link, not a regular
// file, or owned by another user; then appended to, or emptied.
func openOwnFile(path string, appendTo bool, mode os.FileMode) (*os.File, error) {
	flags := os.O_WRONLY | os.O_CREATE | syscall.O_NOFOLLOW
	if appendTo {
		flags |= os.O_APPEND
	}
	f, err := os.OpenFile(path, flags, mode)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link: refused (name the file itself)", path)
	}
	if err != nil {
		return nil, err
	}
	if err := ownedRegular(f); err != nil {
		f.Close()
		return nil, err
	}
	if !appendTo {
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// ownedRegular fails unless f is a regular file owned by this user.
func ownedRegular(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is a %s, not a regular file: refused", f.Name(), fileKind(st.Mode()))
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to user %d, not to you (%d): refused", f.Name(), sys.Uid, os.Geteuid())
	}
	return nil
}

// ownDir fails unless dir is a directory (not a link to one) owned by
// this user that no one else may enter.
func ownDir(dir string) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is a %s, not a directory", dir, fileKind(st.Mode()))
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to user %d", dir, sys.Uid)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is open to others (mode %#o)", dir, st.Mode().Perm())
	}
	return nil
}

// writePidfile writes this process's pid to path, a file of our own.
func writePidfile(path string) error {
	f, err := openOwnFile(path, false, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%d\n", os.Getpid())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
