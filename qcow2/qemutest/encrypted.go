package qemutest

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// Encrypted images: QEMU's tools take passphrases as secret objects and
// open encrypted images through --image-opts, one key-secret per layer.

// secretArgs are the --object arguments for the passphrases of a chain's
// layers, top first ("" for a layer that is not encrypted), and the
// image-opts keys that hand them to the layers.
func secretArgs(passphrases []string) (objects []string, keys string) {
	for i, p := range passphrases {
		if p == "" {
			continue
		}
		id := fmt.Sprintf("s%d", i)
		objects = append(objects, "--object", "secret,id="+id+",data="+p)
		keys += "," + strings.Repeat("backing.", i) + "encrypt.key-secret=" + id
	}
	return objects, keys
}

// imageOpts is the --image-opts string for path in format.
func imageOpts(path, format, keys string) string {
	return "driver=" + format + ",file.filename=" + strings.ReplaceAll(path, ",", ",,") + keys
}

// CreateEncrypted makes an image encrypted with passphrase; opts are -o
// options beside encrypt.key-secret (encrypt.format=luks, cipher, ...).
// QEMU measures its PBKDF2 speed while creating, by the thread's user CPU
// time, which the kernel splits from system time by tick samples: a first
// round that reads as no user time at all fails it ("Unable to get
// accurate CPU usage"), about one run in three here and more often under
// load. Such a run costs ~40 ms and is tried again, up to runsForKDF times.
func CreateEncrypted(t testing.TB, path, format, size, passphrase string, opts ...string) {
	t.Helper()
	objects, _ := secretArgs([]string{passphrase})
	args := append([]string{"create", "-q"}, objects...)
	key := "encrypt.key-secret=s0"
	if format == "luks" { // a raw LUKS file: the options are the encryption's own
		key = "key-secret=s0"
	}
	runEncrypting(t, filepath.Dir(path), append(args, "-f", format, "-o", strings.Join(append(opts, key), ","), path, size)...)
}

// ConvertEncrypted converts a raw file into an image encrypted with
// passphrase; opts are as CreateEncrypted's.
func ConvertEncrypted(t testing.TB, raw, path, format, passphrase string, opts ...string) {
	t.Helper()
	objects, _ := secretArgs([]string{passphrase})
	args := append([]string{"convert", "-q"}, objects...)
	runEncrypting(t, filepath.Dir(path), append(args, "-f", "raw", "-O", format, "-o", strings.Join(append(opts, "encrypt.key-secret=s0"), ","), raw, path)...)
}

// runsForKDF bounds the tries: at the worst rate seen (one run in two
// failing) 100 tries all fail once in 10^30.
const runsForKDF = 100

// runEncrypting runs qemu-img to make an encrypted image, trying again
// where its PBKDF2 measurement failed.
func runEncrypting(t testing.TB, dir string, args ...string) {
	t.Helper()
	for try := 1; ; try++ {
		out, err := runIn(dir, "qemu-img", args...)
		if err == nil {
			return
		}
		if try == runsForKDF || !strings.Contains(out, "accurate CPU usage") {
			t.Fatalf("qemu-img %q: %v\n%s", args, err, out)
		}
	}
}

// IOEncrypted runs qemu-io commands on an encrypted image (format qcow2
// or qcow) with the passphrases of its chain, top first.
func IOEncrypted(t testing.TB, path, format string, passphrases []string, cmds ...string) {
	t.Helper()
	objects, keys := secretArgs(passphrases)
	args := append(objects, "--image-opts", imageOpts(path, format, keys))
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	RunIn(t, filepath.Dir(path), "qemu-io", args...)
}

// RawEncrypted is Raw for an encrypted image or chain, given the
// passphrases of its layers, top first.
func RawEncrypted(t testing.TB, path, format string, passphrases ...string) string {
	t.Helper()
	objects, keys := secretArgs(passphrases)
	out := filepath.Join(t.TempDir(), "qemu.raw")
	args := append(append([]string{"convert"}, objects...), "--image-opts", imageOpts(path, format, keys), "-O", "raw", out)
	RunIn(t, filepath.Dir(path), "qemu-img", args...)
	return out
}
