//go:build unix

package main

import "golang.org/x/sys/unix"

// umask is the process's file mode creation mask.
func umask() uint32 {
	m := unix.Umask(0)
	unix.Umask(m)
	return uint32(m)
}
