package main

import (
	"io"

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
// (a remote image's range requests) on stderr; otherwise none.
func commandLogger(debug bool, stderr io.Writer) *zap.Logger {
	if !debug {
		return zap.NewNop()
	}
	return newZapLogger(zapcore.Lock(zapcore.AddSync(stderr)), zapcore.DebugLevel)
}
