//go:build !windows

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The command a user runs starts a copy of itself in the background and
// waits on a pipe until that copy has mounted (or failed), so that it
// returns only once the mount is usable: the way gocryptfs and rclone do it,
// since a Go process cannot fork safely.
const (
	readyFDEnv = "QCOWMOUNT_READY_FD"
	keysFDEnv  = "QCOWMOUNT_KEYS_FD" // the starting command's answers to passphrase requests
)

// inheritedFile returns the pipe whose descriptor the environment
// variable names, in the background process; nil elsewhere.
func inheritedFile(env, name string) *os.File {
	s := os.Getenv(env)
	if s == "" {
		return nil
	}
	os.Unsetenv(env)
	fd, err := strconv.Atoi(s)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), name)
}

// readyPipe returns the pipe to the starting command in the background
// process, nil elsewhere.
func readyPipe() *os.File { return inheritedFile(readyFDEnv, "ready") }

// keyAnswers returns the pipe on which the starting command answers the
// background process's passphrase requests.
func keyAnswers() *os.File { return inheritedFile(keysFDEnv, "keys") }

// The background process answers on the pipe with one line: "ok", then
// notes for the user, or "fail CODE", then the error. Before that it may
// ask for passphrases, a line each (keyRequestPrefix).

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
		msg = fmt.Sprintf("fail %d\n%s", exitCode(err), withHint(err))
	}
	_, werr := io.WriteString(ready, msg)
	ready.Close()
	if err != nil {
		return quietExit(exitCode(err))
	}
	if null, nerr := os.OpenFile(os.DevNull, os.O_WRONLY, 0); nerr == nil {
		redirect(int(null.Fd()), 2)
		null.Close()
	}
	return werr
}

// startDaemon starts the background process with args and waits for its
// answer. Its stderr comes back through a pipe: fusermount writes its
// reasons there ("failed to open /dev/fuse: Permission denied"), and they
// go into the error. Passphrases it asks for come from keys.
func startDaemon(args []string, keys *localKeys) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var pipes []*os.File // read and write ends: ready, stderr, key answers
	for range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll(pipes)
			return err
		}
		pipes = append(pipes, r, w)
	}
	r, w, er, ew, kr, kw := pipes[0], pipes[1], pipes[2], pipes[3], pipes[4], pipes[5]
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), readyFDEnv+"=3", keysFDEnv+"=4")
	cmd.ExtraFiles = []*os.File{w, kr}
	cmd.Stderr = ew
	// Its own session: it must not hold the caller's terminal. (It moves
	// to / itself once mounted, having resolved its relative paths.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		closeAll(pipes)
		return fmt.Errorf("starting the background process: %w", err)
	}
	closeAll([]*os.File{w, ew, kr})
	var stderr bytes.Buffer
	var copied sync.WaitGroup
	copied.Go(func() { io.Copy(&stderr, io.LimitReader(er, 64<<10)) })
	msg := readAnswer(bufio.NewReader(r), keys, kw)
	kw.Close()
	r.Close()
	status, rest, _ := strings.Cut(msg, "\n")
	if status == "ok" {
		// The pipe closes once the process has let go of stderr.
		copied.Wait()
		er.Close()
		for _, note := range strings.Split(rest, "\n") {
			if note = strings.TrimSpace(note); note != "" {
				fmt.Fprintln(os.Stderr, "qcowmount:", note)
			}
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
	if code == exitKey && strings.Contains(rest, "opens with this passphrase") {
		rest = strings.TrimSpace(rest) + keys.newlineHint()
	}
	return exitError{code, explainFailure(rest, stderr.String())}
}

// readAnswer reads the background process's ready pipe: it answers each
// passphrase request on keys, and returns the final status and message.
func readAnswer(r *bufio.Reader, keys *localKeys, answers io.Writer) string {
	for {
		line, err := r.ReadString('\n')
		if strings.HasPrefix(line, keyRequestPrefix) && err == nil {
			if answerKeyRequest(strings.TrimSuffix(line, "\n"), keys, answers) != nil {
				return "" // it went away while asking
			}
			continue
		}
		rest, _ := io.ReadAll(r)
		return line + string(rest)
	}
}

// errStarterGone ends an opening whose starting command went away.
var errStarterGone = errors.New("the starting command is gone (it exited, was interrupted or killed) before the mount was ready")

// watchStarter calls gone once the starting command has closed its end
// of the ready pipe, which the kernel tells by an error on ours, unless
// stop is called first.
func watchStarter(ready *os.File, gone func()) (stop func(), err error) {
	raw, err := ready.SyscallConn()
	if err != nil {
		return nil, err
	}
	wake, waker, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		var revents int16
		raw.Control(func(fd uintptr) {
			// Nothing is asked of the pipe: poll reports its errors anyway.
			fds := []unix.PollFd{{Fd: int32(fd)}, {Fd: int32(wake.Fd()), Events: unix.POLLIN}}
			for {
				if _, err := unix.Poll(fds, -1); err != unix.EINTR {
					break
				}
			}
			revents = fds[0].Revents
		})
		if revents&(unix.POLLERR|unix.POLLHUP) != 0 {
			gone()
		}
	}()
	return func() {
		waker.Close()
		<-watched
		wake.Close()
	}, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
