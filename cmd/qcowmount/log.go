package main

import (
	"log/syslog"
	"os"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger logs to stderr in the foreground; in the background to
// --log-file, or to syslog, or nowhere when neither is available.
func newLogger(c *cli.Context, background bool) (*zap.Logger, error) {
	level := zapcore.InfoLevel
	if c.Bool("debug") || c.Bool("fuse-debug") {
		level = zapcore.DebugLevel
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	var sink zapcore.WriteSyncer = zapcore.Lock(os.Stderr)
	if background {
		sink = zapcore.AddSync(nopWriter{})
		if path := c.String("log-file"); path != "" {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				return nil, err
			}
			sink = zapcore.Lock(f)
		} else if w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "qcowmount"); err == nil {
			sink = zapcore.AddSync(w)
		}
	}
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), sink, level)
	return zap.New(core), nil
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }
