//go:build !windows

package main

import (
	"fmt"
	"log/syslog"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger logs to stderr in the foreground. In the background it logs
// to --log-file, or to syslog, or, where there is no syslog (containers,
// minimal VMs), to a file named after the mountpoint in the user's runtime
// directory; the note says where, for the user.
func newLogger(c *cli.Context, background bool, mountpoint string) (log *zap.Logger, note string, err error) {
	level := zapcore.InfoLevel
	if c.Bool("debug") || c.Bool("fuse-debug") {
		level = zapcore.DebugLevel
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	var sink zapcore.WriteSyncer = zapcore.Lock(os.Stderr)
	if background {
		path := c.String("log-file")
		if path == "" {
			if w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "qcowmount"); err == nil {
				sink = zapcore.AddSync(w)
			} else {
				path = fallbackLogFile(mountpoint)
				note = "no syslog here: logging to " + shellQuote(path)
			}
		}
		if path != "" {
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return nil, "", fmt.Errorf("log file: %w", err)
			}
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
			if err != nil {
				return nil, "", fmt.Errorf("log file: %w", err)
			}
			sink = zapcore.Lock(f)
		}
	}
	core := zapcore.NewCore(escapingEncoder{zapcore.NewConsoleEncoder(enc)}, sink, level)
	return zap.New(core), note, nil
}

// fallbackLogFile is where the background process logs without syslog:
// /run/qcowmount for root, $XDG_RUNTIME_DIR/qcowmount for others (or the
// temporary directory), in a file named after the mountpoint.
func fallbackLogFile(mountpoint string) string {
	dir := "/run/qcowmount"
	if os.Geteuid() != 0 {
		dir = filepath.Join(os.TempDir(), fmt.Sprintf("qcowmount-%d", os.Geteuid()))
		if xdg := os.Getenv("XDG_RUNTIME_DIR"); xdg != "" {
			dir = filepath.Join(xdg, "qcowmount")
		}
	}
	name := strings.ReplaceAll(strings.Trim(mountpoint, "/"), "/", "-")
	if name == "" {
		name = "root"
	}
	return filepath.Join(dir, name+".log")
}
