package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// The command a user runs starts a copy of itself in the background and
// waits on a pipe until that copy has mounted (or failed), so that it
// returns only once the mount is usable: the way gocryptfs and rclone do it,
// since a Go process cannot fork safely.
const readyFDEnv = "QCOWMOUNT_READY_FD"

// readyPipe returns the pipe to the starting command in the background
// process, nil elsewhere.
func readyPipe() *os.File {
	s := os.Getenv(readyFDEnv)
	if s == "" {
		return nil
	}
	os.Unsetenv(readyFDEnv)
	fd, err := strconv.Atoi(s)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), "ready")
}

// The background process answers on the pipe with one line: "ok", then
// notes for the user, or "fail CODE", then the error.

// reportReady tells the starting command the outcome. In the background
// process a failure becomes a quiet exit with the error's code (the
// starting command prints it); on success the process lets go of the
// stderr it shared with the starting command.
func reportReady(ready *os.File, err error, notes ...string) error {
	if ready == nil {
		return err
	}
	msg := "ok\n" + strings.Join(notes, "\n")
	if err != nil {
		msg = fmt.Sprintf("fail %d\n%s", exitCode(err), err)
	}
	_, werr := io.WriteString(ready, msg)
	ready.Close()
	if err != nil {
		return quietExit(exitCode(err))
	}
	if null, nerr := os.OpenFile(os.DevNull, os.O_WRONLY, 0); nerr == nil {
		syscall.Dup2(int(null.Fd()), 2)
		null.Close()
	}
	return werr
}

// startDaemon starts the background process with args and waits for its
// answer. Its stderr comes back through a pipe: fusermount writes its
// reasons there ("failed to open /dev/fuse: Permission denied"), and they
// go into the error.
func startDaemon(args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	er, ew, err := os.Pipe()
	if err != nil {
		r.Close()
		w.Close()
		return err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), readyFDEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stderr = ew
	// Its own session: it must not hold the caller's terminal. (It moves
	// to / itself once mounted, having resolved its relative paths.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		for _, f := range []*os.File{r, w, er, ew} {
			f.Close()
		}
		return fmt.Errorf("starting the background process: %w", err)
	}
	w.Close()
	ew.Close()
	var stderr bytes.Buffer
	var copied sync.WaitGroup
	copied.Go(func() { io.Copy(&stderr, io.LimitReader(er, 64<<10)) })
	msg, _ := io.ReadAll(r)
	r.Close()
	status, rest, _ := strings.Cut(string(msg), "\n")
	if status == "ok" {
		// The pipe closes once the process has let go of stderr.
		copied.Wait()
		er.Close()
		if rest = strings.TrimSpace(rest); rest != "" {
			fmt.Fprintln(os.Stderr, "qcowmount:", rest)
		}
		return cmd.Process.Release()
	}
	werr := cmd.Wait()
	copied.Wait()
	er.Close()
	code, err := strconv.Atoi(strings.TrimPrefix(status, "fail "))
	if err != nil || strings.TrimSpace(rest) == "" {
		return fmt.Errorf("the background process exited before the mount was ready (%v): %s", werr, strings.TrimSpace(stderr.String()))
	}
	return exitError{code, explainFailure(rest, stderr.String())}
}
