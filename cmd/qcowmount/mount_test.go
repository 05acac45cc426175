package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

func TestSplitOptions(t *testing.T) {
	tests := []struct {
		in        []string
		wantFUSE  []string
		wantFlags map[string]string
		wantErr   string
	}{
		{nil, nil, nil, ""},
		{[]string{"allow_other"}, []string{"allow_other"}, nil, ""},
		{[]string{"allow_other,uid=1000", "gid=5"}, []string{"allow_other", "uid=1000", "gid=5"}, nil, ""},
		{[]string{" a , ,b"}, []string{"a", "b"}, nil, ""},
		{[]string{"ro,nofail,_netdev,noauto,user,x-systemd.automount,dev,nosuid,noexec,rw"}, nil, nil, ""},
		{[]string{"ro,snapshot=before upgrade,backing_dir=/srv/base,force_share,allow_other"}, []string{"allow_other"},
			map[string]string{"snapshot": "before upgrade", "backing-dir": "/srv/base", "force-share": "true"}, ""},
		{[]string{"l2_cache_size=64M,log_file=/var/log/q.log,no_partitions"}, nil,
			map[string]string{"l2-cache-size": "64M", "log-file": "/var/log/q.log", "no-partitions": "true"}, ""},
		{[]string{"force_share=maybe"}, nil, nil, "-o force_share=maybe"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.in, " "), func(t *testing.T) {
			app := newApp()
			app.Action = func(c *cli.Context) error {
				got, err := splitOptions(c)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) || exitCode(err) != exitUsage {
						t.Fatalf("error %v (exit %d), want usage error %q", err, exitCode(err), tc.wantErr)
					}
					return nil
				}
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, tc.wantFUSE) {
					t.Errorf("FUSE options %q, want %q", got, tc.wantFUSE)
				}
				for flag, want := range tc.wantFlags {
					if got := fmt.Sprint(c.Value(flag)); got != want {
						t.Errorf("--%s = %q, want %q", flag, got, want)
					}
				}
				return nil
			}
			args := []string{"qcowmount"}
			for _, o := range tc.in {
				args = append(args, "-o", o)
			}
			if err := app.Run(args); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFlagsBeforeACommand: a flag given before a command's name that the
// command does not take is a usage error, not silently dropped.
func TestFlagsBeforeACommand(t *testing.T) {
	app := newApp()
	err := app.Run(interspersed(app, []string{"qcowmount", "--foreground", "info", "img.qcow2"}))
	if exitCode(err) != exitUsage || !strings.Contains(err.Error(), "foreground") {
		t.Fatalf("%v (exit %d), want a usage error naming the flag", err, exitCode(err))
	}
}

func TestInterspersed(t *testing.T) {
	tests := []struct{ in, want string }{
		{"qcowmount img mnt", "qcowmount -- img mnt"},
		{"qcowmount img mnt -o allow_other", "qcowmount -o allow_other -- img mnt"},
		{"qcowmount -f img -s snap1 mnt --debug", "qcowmount -f -s snap1 --debug -- img mnt"},
		{"qcowmount img mnt -o ro,nofail --l2-cache-size=64M", "qcowmount -o ro,nofail --l2-cache-size=64M -- img mnt"},
		{"qcowmount -- -odd-name mnt", "qcowmount -- -odd-name mnt"},
		{"qcowmount info img --json", "qcowmount info --json -- img"},
		{"qcowmount umount mnt --wait", "qcowmount umount --wait -- mnt"},
		{"qcowmount --version", "qcowmount --version"},
		// Flags before a command's name are the command's.
		{"qcowmount --debug info URL --remote-timeout 1s", "qcowmount info --debug --remote-timeout 1s -- URL"},
		{"qcowmount -s snap1 --debug export img out", "qcowmount export -s snap1 --debug -- img out"},
		{"qcowmount -f info img", "qcowmount info -f -- img"},
	}
	for _, tc := range tests {
		if got := strings.Join(interspersed(newApp(), strings.Fields(tc.in)), " "); got != tc.want {
			t.Errorf("interspersed(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := map[string]int64{"65536": 65536, "64K": 64 << 10, "64KiB": 64 << 10, "32M": 32 << 20, "1G": 1 << 30, " 2 T": 2 << 40}
	for in, want := range tests {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v, want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "big", "1X", "-", "99999999999T"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) did not fail", bad)
		}
	}
}

func TestShellQuote(t *testing.T) {
	tests := map[string]string{"/mnt/q": "/mnt/q", "/mnt/my disk": "'/mnt/my disk'", "/it's": `'/it'\''s'`, "": "''"}
	for in, want := range tests {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestHumanSize(t *testing.T) {
	tests := map[int64]string{
		0: "0 B", 512: "512 B", 999: "999 B", 1000: "0.977 KiB", 1 << 10: "1 KiB", 1536: "1.5 KiB",
		1048064: "1 MiB", 64 << 20: "64 MiB", 1000 << 20: "0.977 GiB", 1072693248: "0.999 GiB",
		1 << 30: "1 GiB", 1 << 40: "1 TiB", 1 << 62: "4 EiB",
	}
	for in, want := range tests {
		if got := humanSize(in); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", in, got, want)
		}
	}
	if got := vmClock(time.Hour + 2*time.Minute + 3*time.Second + 4*time.Millisecond); got != "01:02:03.004" {
		t.Errorf("vmClock = %q", got)
	}
}

// TestHumanSizeMatchesQemuImg checks the unit boundaries against qemu-img
// info's "virtual size" line.
func TestHumanSizeMatchesQemuImg(t *testing.T) {
	qemutest.Require(t, "qemu-img")
	for _, size := range []int64{512, 1024, 1048064, 1000 << 20, 1023 << 20, 1072693248, 1 << 30, 999 << 30, 1000 << 30} {
		path := filepath.Join(t.TempDir(), "img.qcow2")
		qemutest.Create(t, path, "qcow2", strconv.FormatInt(size, 10))
		out := qemutest.Run(t, "qemu-img", "info", path)
		want := fmt.Sprintf("virtual size: %s (%d bytes)", humanSize(size), size)
		if !strings.Contains(out, want+"\n") {
			t.Errorf("qemu-img info says\n%s\nwe would say %q", out, want)
		}
	}
}

func TestPrintable(t *testing.T) {
	tests := map[string]string{
		"plain.qcow2":              "plain.qcow2",
		"caf\u00e9 \u2603":         "caf\u00e9 \u2603",
		"evil\x1b]0;pwned\x07name": `evil\x1b]0;pwned\aname`,
		"csi\u009b31m":             `csi\u009b31m`,
		"new\nline\ttab":           `new\nline\ttab`,
		"bad\xffutf8":              `bad\xffutf8`,
		`back\slash`:               `back\slash`,
		"real \ufffd replacement":  "real \ufffd replacement",
		"bidi \u202eexe.txt":       `bidi \u202eexe.txt`,
		"zero\u200bwidth":          `zero\u200bwidth`,
		"line\u2028separator":      `line\u2028separator`,
	}
	for in, want := range tests {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestManAndCompletions: the man page and the completions name every
// flag of every command, and the bash script parses.
func TestManAndCompletions(t *testing.T) {
	app := newApp()
	capture := func(args ...string) string {
		t.Helper()
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout := os.Stdout
		os.Stdout = w
		runErr := newApp().Run(append([]string{"qcowmount"}, args...))
		os.Stdout = stdout
		w.Close()
		out, _ := io.ReadAll(r)
		if runErr != nil {
			t.Fatalf("%q: %v", args, runErr)
		}
		return string(out)
	}
	man, bash, fish := capture("man"), capture("completion", "bash"), capture("completion", "fish")
	if !strings.Contains(man, `.TH qcowmount 1`) {
		t.Errorf("man page is not qcowmount(1): %.200s", man)
	}
	flags := append([]cli.Flag{}, app.Flags...)
	for _, c := range app.Commands {
		flags = append(flags, c.Flags...)
		if !c.Hidden && (!strings.Contains(man, c.Name) || !strings.Contains(bash, c.Name)) {
			t.Errorf("command %s is missing from the man page or the bash completion", c.Name)
		}
	}
	for _, f := range flags {
		name := f.Names()[0]
		if len(name) > 1 && (!strings.Contains(man, name) || !strings.Contains(bash, "--"+name) || !strings.Contains(fish, "-l "+name)) {
			t.Errorf("flag %s is missing from the man page or a completion", name)
		}
	}
	if _, err := exec.LookPath("bash"); err == nil {
		cmd := exec.Command("bash", "-n")
		cmd.Stdin = strings.NewReader(bash)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("bash -n: %v: %s", err, out)
		}
	}
}
