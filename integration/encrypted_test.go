package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
	"golang.org/x/sys/unix"
)

// encryptedGuest converts the guest disk (GPT, ext4 and FAT) into an
// encrypted image with QEMU: LUKS in its default cipher, legacy AES in
// qcow2, legacy AES in qcow version 1.
func encryptedGuest(t *testing.T, dir, raw, name, format, encryptOpts, pass string) string {
	t.Helper()
	out := filepath.Join(dir, name+"."+format)
	qemutest.ConvertEncrypted(t, raw, out, format, pass, encryptOpts)
	return out
}

// TestEncryptedMountsMatchQEMU mounts encrypted images of a guest disk:
// disk.raw is QEMU's decryption byte for byte, the partitions are there,
// and the guest's files read through fuse2fs, as a user without root does.
func TestEncryptedMountsMatchQEMU(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "fuse2fs")
	dir := t.TempDir()
	raw, sums := qemutest.GuestDisk(t, dir)
	const pass = "correct horse battery staple"
	key := qemutest.KeyFile(t, pass)
	// Short names: fuse2fs mangles mountpoints with commas in them.
	tests := []struct{ name, format, opts string }{
		{"luks-default", "qcow2", "encrypt.format=luks,encrypt.iter-time=10"},
		{"luks-twofish-essiv", "qcow2", "encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-alg=twofish-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256"},
		{"aes-qcow2", "qcow2", "encrypt.format=aes"},
		{"aes-qcow", "qcow", "encrypt.format=aes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			image := encryptedGuest(t, dir, raw, tc.name, tc.format, tc.opts, pass)
			mnt := t.TempDir()
			out, code := run(t, image, mnt, "--key-file", key)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, out)
			}
			t.Cleanup(func() { unmount(t, mnt) })
			// Legacy AES cannot check the passphrase: the user is told.
			if warned := strings.Contains(out, "warning: legacy AES encryption cannot check a passphrase"); warned != strings.HasPrefix(tc.name, "aes") {
				t.Errorf("warning about legacy AES: %v, for %s: %s", warned, tc.name, out)
			}
			cmpFiles(t, filepath.Join(mnt, "disk.raw"), qemutest.RawEncrypted(t, image, tc.format, pass))
			cmpFiles(t, filepath.Join(mnt, "disk.raw"), raw)
			guest := t.TempDir()
			sh(t, "fuse2fs", "-o", "ro,fakeroot", filepath.Join(mnt, "p1.raw"), guest)
			checkFiles(t, guest, sums["ext4"])
			sh(t, "fusermount3", "-u", guest)
		})
	}
}

// encryptedChain is an encrypted base under an encrypted overlay, each
// with its own passphrase.
func encryptedChain(t *testing.T, dir string) (top, base string) {
	t.Helper()
	luks := []string{"encrypt.format=luks", "encrypt.iter-time=10"}
	base, top = filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	qemutest.CreateEncrypted(t, base, "qcow2", "4M", "base pass", luks...)
	qemutest.IOEncrypted(t, base, "qcow2", []string{"base pass"}, "write -P 0x11 0 2M")
	qemutest.CreateEncrypted(t, top, "qcow2", "4M", "top pass", append(luks, "backing_file=base.qcow2", "backing_fmt=qcow2")...)
	qemutest.IOEncrypted(t, top, "qcow2", []string{"top pass", "base pass"}, "write -P 0x22 1M 2M")
	return top, base
}

// TestPassphraseSources: key files per layer or for all, -o key_file,
// standard input; wrong, missing and newline-ended passphrases fail with
// one line, exit 6 and nothing mounted; no passphrase reaches the server's
// arguments, environment or log.
func TestPassphraseSources(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	top, base := encryptedChain(t, dir)
	want := qemutest.RawEncrypted(t, top, "qcow2", "top pass", "base pass")
	baseKey, topKey := qemutest.KeyFile(t, "base pass"), qemutest.KeyFile(t, "top pass")
	withNewline := qemutest.KeyFile(t, "top pass\n")
	single := filepath.Join(dir, "single.qcow2")
	qemutest.CreateEncrypted(t, single, "qcow2", "1M", "top pass", "encrypt.format=luks", "encrypt.iter-time=10")
	tests := []struct {
		name    string
		image   string
		args    []string
		stdin   string
		wantErr string // "" to mount
	}{
		{"a key file per layer", top, []string{"--key-file", "base.qcow2=" + baseKey, "--key-file", top + "=" + topKey}, "", ""},
		{"per layer by path, one for the rest", top, []string{"--key-file", base + "=" + baseKey, "--key-file", topKey}, "", ""},
		{"-o key_file", top, []string{"-o", "key_file=base.qcow2=" + baseKey, "-o", "key_file=" + topKey}, "", ""},
		{"standard input", single, []string{"--password-stdin"}, "top pass\n", ""},
		{"one key for layers that differ", top, []string{"--key-file", topKey}, "", "no key slot of base.qcow2 opens with this passphrase"},
		{"wrong on standard input", single, []string{"--password-stdin"}, "not it\n", "no key slot of " + single + " opens with this passphrase"},
		{"none at all", single, nil, "", "is encrypted (LUKS) and no passphrase was given: give it with --key-file"},
		{"a key file ending in a newline", single, []string{"--key-file", withNewline}, "", "ends with a newline, which is part of the passphrase"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mnt := t.TempDir()
			log := filepath.Join(t.TempDir(), "log")
			cmd := exec.Command(bin, append([]string{tc.image, mnt, "--log-file", log}, tc.args...)...)
			cmd.Stdin = strings.NewReader(tc.stdin)
			b, err := cmd.CombinedOutput()
			out := string(b)
			if tc.wantErr != "" {
				if cmd.ProcessState.ExitCode() != 6 || !strings.Contains(out, tc.wantErr) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
					t.Fatalf("exit %d, want 6 and one line saying %q: %s", cmd.ProcessState.ExitCode(), tc.wantErr, out)
				}
				if isMounted(mnt) || serverPID(mnt) != 0 {
					t.Fatal("a refused mount left something behind")
				}
				return
			}
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			t.Cleanup(func() { unmount(t, mnt) })
			if tc.image == top {
				cmpFiles(t, filepath.Join(mnt, "disk.raw"), want)
			}
			pid := serverPID(mnt)
			for _, f := range []string{fmt.Sprintf("/proc/%d/cmdline", pid), fmt.Sprintf("/proc/%d/environ", pid), log} {
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(string(b), "top pass") || strings.Contains(string(b), "base pass") {
					t.Errorf("%s holds a passphrase", f)
				}
			}
		})
	}
}

// openPTY opens a pseudo-terminal pair: what a user's terminal is to the
// program running in it.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		qemutest.Missing(t, "no pseudo-terminals: "+err.Error())
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// TestPassphrasePrompt types passphrases at the prompt on a terminal: for
// each encrypted layer, by name, with echo off, again after a wrong one.
func TestPassphrasePrompt(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	top, _ := encryptedChain(t, dir)
	master, slave := openPTY(t)
	mnt := t.TempDir()
	cmd := exec.Command(bin, top, mnt)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	var screen lockedBuffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			screen.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	typeAt := func(prompt string, times int, answer string) {
		t.Helper()
		waitFor(t, fmt.Sprintf("%q on the terminal", prompt), 20*time.Second, func() bool { return strings.Count(screen.String(), prompt) >= times })
		master.WriteString(answer + "\n")
	}
	typeAt("Passphrase for "+top+" (LUKS): ", 1, "top pass")
	typeAt("Passphrase for base.qcow2 (LUKS): ", 1, "a typo")
	typeAt("Passphrase for base.qcow2 (LUKS): ", 2, "base pass")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v: %s", err, screen.String())
	}
	s := screen.String()
	if !strings.Contains(s, "no key slot of base.qcow2 opens with this passphrase; try again") {
		t.Errorf("no word of the wrong passphrase: %q", s)
	}
	for _, typed := range []string{"top pass", "base pass", "a typo"} {
		if strings.Contains(s, typed) {
			t.Fatalf("%q was echoed: %q", typed, s)
		}
	}
	cmpFiles(t, filepath.Join(mnt, "disk.raw"), qemutest.RawEncrypted(t, top, "qcow2", "top pass", "base pass"))
}
