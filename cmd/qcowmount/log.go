//go:build !windows

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/syslog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// mountLog is the serving process's log and where it goes.
type mountLog struct {
	*zap.Logger
	note string // for the user: where the log goes, when it is not where they would look
	// fallback is the file of a log that went to the fallback directory:
	// removed at a clean unmount unless warned says it holds something
	// worth keeping.
	fallback *os.File
	warned   atomic.Bool
}

// newMountLog logs to stderr in the foreground. In the background it
// logs to --log-file, or to syslog, or, where there is no syslog
// (containers, minimal VMs), to a file named after the mountpoint in a
// directory of the user's own (fallbackLogDir).
func newMountLog(o mountOptions, background bool, mountpoint string) (*mountLog, error) {
	level := zapcore.InfoLevel
	if o.image.debug || o.fuseDebug {
		level = zapcore.DebugLevel
	}
	l := &mountLog{}
	var sink zapcore.WriteSyncer = zapcore.Lock(os.Stderr)
	if background {
		path := o.logFile
		if path == "" {
			if w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "qcowmount"); err == nil {
				sink = zapcore.AddSync(w)
			} else {
				dir, err := fallbackLogDir()
				if err != nil {
					return nil, fmt.Errorf("no syslog here, and no directory to log to: %w; give --log-file FILE", err)
				}
				path = filepath.Join(dir, logName(mountpoint))
				l.note = "no syslog here: logging to " + shellQuote(path)
			}
		}
		if path != "" {
			f, err := openOwnFile(path, true, 0o600)
			if err != nil {
				return nil, fmt.Errorf("log file: %w", err)
			}
			if o.logFile == "" {
				l.fallback = f
			}
			sink = zapcore.Lock(f)
		}
	}
	l.Logger = newZapLogger(sink, level).WithOptions(zap.Hooks(func(e zapcore.Entry) error {
		if e.Level >= zapcore.WarnLevel {
			l.warned.Store(true)
		}
		return nil
	}))
	return l, nil
}

// close ends the log; after a clean unmount, a fallback file that holds
// nothing but the mount's routine lines goes too, so that a day of
// mounts does not leave hundreds of files behind.
func (l *mountLog) close(clean bool) {
	l.Sync() //nolint:errcheck
	if l.fallback == nil {
		return
	}
	if clean && !l.warned.Load() {
		// Only if the name is still this file: a later mount on the same
		// mountpoint may have made a new one.
		if st, err := os.Stat(l.fallback.Name()); err == nil {
			if mine, err := l.fallback.Stat(); err == nil && os.SameFile(st, mine) {
				os.Remove(l.fallback.Name())
			}
		}
	}
	l.fallback.Close()
}

// logName is the fallback log's file name for a mountpoint.
func logName(mountpoint string) string {
	name := strings.ReplaceAll(strings.Trim(mountpoint, "/"), "/", "-")
	if name == "" {
		name = "root"
	}
	return name + ".log"
}

// fallbackLogDir is where the background process logs without syslog:
// $XDG_RUNTIME_DIR/qcowmount, the user's own runtime directory; without
// one, /run/qcowmount for root and $TMPDIR/qcowmount-UID for others.
func fallbackLogDir() (string, error) {
	dir := "/run/qcowmount"
	if xdg := os.Getenv("XDG_RUNTIME_DIR"); xdg != "" {
		dir = filepath.Join(xdg, "qcowmount")
	} else if uid := os.Geteuid(); uid != 0 {
		dir = filepath.Join(os.TempDir(), fmt.Sprintf("qcowmount-%d", uid))
	}
	return ownLogDir(dir)
}

// ownLogDir makes dir, 0700, and returns it if it is ours alone
// (ownDir): in a shared /tmp another user may have made it first, or
// left a symbolic link there. Then it makes a new one beside it, under a
// name nobody can guess, and returns that.
func ownLogDir(dir string) (string, error) {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	if err := ownDir(dir); err == nil {
		return dir, nil
	}
	return os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+"-")
}
