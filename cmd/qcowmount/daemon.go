package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
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

// reportReady tells the starting command the outcome and returns err. In
// the background process it also detaches from the terminal's streams.
func reportReady(ready *os.File, err error) error {
	if ready == nil {
		return err
	}
	msg := "ok"
	if err != nil {
		msg = err.Error()
	}
	_, werr := io.WriteString(ready, msg)
	ready.Close()
	if err != nil {
		// The starting command prints it; exit quietly.
		os.Exit(1)
	}
	return werr
}

func startDaemon() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), readyFDEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		r.Close()
		return fmt.Errorf("starting the background process: %w", err)
	}
	w.Close()
	msg, _ := io.ReadAll(r)
	r.Close()
	if string(msg) == "ok" {
		return cmd.Process.Release()
	}
	werr := cmd.Wait()
	if s := strings.TrimSpace(string(msg)); s != "" {
		return errors.New(s)
	}
	return fmt.Errorf("%w (%v)", errNotReady, werr)
}
