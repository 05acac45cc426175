package fusefs

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/splice"
	"golang.org/x/sys/unix"
)

// spliceMax is the largest read go-fuse can splice: the reply, its header
// and a page must fit in a pipe of the system's maximum size (1 MiB by
// default, so the 1 MiB reads of sequential I/O cannot be spliced; trying
// would cost a pipe and a failed resize before the fallback).
var spliceMax = splice.MaxPipeSize() - 2*os.Getpagesize()

// raiseReadahead sets the mount's readahead to n bytes, so that buffered
// sequential reads arrive as 1 MiB requests; the kernel starts FUSE mounts
// at 128 KiB whatever the file system asks. Only root may change it.
func raiseReadahead(mountpoint string, n int) error {
	var st syscall.Stat_t
	if err := syscall.Stat(mountpoint, &st); err != nil {
		return err
	}
	bdi := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(bdi, []byte(strconv.Itoa(n>>10)), 0)
}
