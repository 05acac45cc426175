//go:build !linux

package fusefs

import "errors"

// spliceMax is 0 where there is no splice(2): every read is copied.
const spliceMax = 0

// raiseReadahead is for Linux's per-device readahead (its bdi): elsewhere
// the kernel's default stays.
func raiseReadahead(string, int) error {
	return errors.New("no per-mount readahead setting on this system")
}
