package main

import (
	"os"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newZapLogger writes lines of level and above to sink, in the console
// format, with the text that comes from images escaped.
func newZapLogger(sink zapcore.WriteSyncer, level zapcore.Level) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	return zap.New(zapcore.NewCore(escapingEncoder{zapcore.NewConsoleEncoder(enc)}, sink, level))
}

// commandLogger is the log of a command that reads an image without
// mounting it (info, export, hash, check): with --debug, its debug lines
// (a remote image's range requests) on standard error; otherwise none.
func commandLogger(c *cli.Context) *zap.Logger {
	if !flagAnywhere(c, "debug") {
		return zap.NewNop()
	}
	return newZapLogger(zapcore.Lock(os.Stderr), zapcore.DebugLevel)
}

// flagAnywhere reports whether the boolean flag name is set for the
// command or before its name (qcowmount --debug info URL).
func flagAnywhere(c *cli.Context, name string) bool {
	for _, x := range c.Lineage() {
		if x.Bool(name) {
			return true
		}
	}
	return false
}
