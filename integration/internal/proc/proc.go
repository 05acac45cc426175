// Package proc finds and inspects the processes that serve FUSE mounts,
// for the integration tests and the benchmark.
package proc

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Find returns the pid of the process running binary whose last argument
// is lastArg (a mountpoint), or 0.
func Find(binary, lastArg string) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		args := bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0})
		if len(args) > 1 && string(args[0]) == binary && string(args[len(args)-1]) == lastArg {
			pid, _ := strconv.Atoi(filepath.Base(d))
			return pid
		}
	}
	return 0
}

// Alive reports whether pid runs (a zombie has exited: it only waits for
// its parent to collect it).
func Alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// PeakRSS returns a process's peak resident memory (VmHWM) in KiB, or 0.
func PeakRSS(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// Usage is the CPU time a process has used, all its threads together, and
// how often its live threads gave up the CPU.
type Usage struct {
	CPU      time.Duration
	Switches int64 // voluntary and involuntary context switches
}

// ticksPerSecond is USER_HZ, the unit of /proc's CPU times: 100 on every
// Linux architecture Go supports.
const ticksPerSecond = 100

// UsageOf reads a process's Usage from /proc.
func UsageOf(pid int) (Usage, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Usage{}, err
	}
	// The fields after the command name, which may hold spaces: state is
	// the first, utime and stime the 12th and 13th.
	i := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[i+1:]))
	if i < 0 || len(f) < 13 {
		return Usage{}, fmt.Errorf("/proc/%d/stat: unexpected layout", pid)
	}
	var u Usage
	for _, s := range f[11:13] {
		ticks, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return Usage{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		u.CPU += time.Duration(ticks) * time.Second / ticksPerSecond
	}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil {
		return Usage{}, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread has exited
		}
		for _, line := range strings.Split(string(b), "\n") {
			name, v, ok := strings.Cut(line, ":")
			if ok && (name == "voluntary_ctxt_switches" || name == "nonvoluntary_ctxt_switches") {
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil {
					return Usage{}, fmt.Errorf("%s: %w", t, err)
				}
				u.Switches += n
			}
		}
	}
	return u, nil
}
