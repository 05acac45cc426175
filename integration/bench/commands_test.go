package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestTimeCommandsWithin(t *testing.T) {
	tests := []struct {
		name    string
		cmd     string // a shell command; $OUT is the output file
		limit   time.Duration
		tooLong bool
		fails   bool
	}{
		{"finishes", "echo x > $OUT", time.Minute, false, false},
		{"no limit", "echo x > $OUT", 0, false, false},
		// sleep is a child of the shell: stopping must stop it too.
		{"stopped at the limit", "echo x > $OUT; sleep 30 & echo $! > $OUT.pid; wait", 200 * time.Millisecond, true, true},
		{"fails", "echo x > $OUT; exit 3", time.Minute, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			t.Setenv("OUT", out)
			start := time.Now()
			secs, err := timeCommandsWithin([][]string{{"sh", "-c", tc.cmd}}, out, tc.limit)
			if (err != nil) != tc.fails || errors.Is(err, errTooLong) != tc.tooLong {
				t.Fatalf("err = %v, want failure %v, errTooLong %v", err, tc.fails, tc.tooLong)
			}
			if took := time.Since(start); tc.tooLong && took > 10*time.Second {
				t.Errorf("returned after %v: the command was not stopped at its limit", took)
			}
			if b, err := os.ReadFile(out + ".pid"); err == nil {
				pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
				if err != nil {
					t.Fatal(err)
				}
				// Once killed, it is reaped by whoever adopted it.
				for i := 0; syscall.Kill(pid, 0) == nil; i++ {
					if i == 50 {
						syscall.Kill(pid, syscall.SIGKILL)
						t.Fatalf("the command's child %d is still running", pid)
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
			if !tc.fails && secs <= 0 {
				t.Errorf("secs = %v for a command that ran", secs)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("the output is still there (stat: %v)", err)
			}
		})
	}
}
