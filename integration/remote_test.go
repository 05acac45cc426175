package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qcowmount/qcowmount/qcow2/qemutest"
)

// startNginx serves root on a free loopback port with its own
// configuration, over TLS with the given certificate and key when they
// are set, and returns the base URL. It stops when the test ends.
func startNginx(t *testing.T, root, cert, key string) string {
	t.Helper()
	qemutest.Require(t, "nginx")
	// A port found free can be taken by another process before nginx
	// binds it (other packages and clones test at the same time): then
	// nginx exits saying so, and the next free port is tried.
	for try := 1; ; try++ {
		url, out, err := tryNginx(t, root, cert, key)
		if err == nil {
			return url
		}
		if !strings.Contains(out, "Address already in use") || try == 5 {
			t.Fatalf("nginx: %v\n%s", err, out)
		}
	}
}

func tryNginx(t *testing.T, root, cert, key string) (url, output string, err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	scheme, listen := "http", addr
	tls := ""
	if cert != "" {
		scheme, listen = "https", addr+" ssl"
		tls = fmt.Sprintf("ssl_certificate %s; ssl_certificate_key %s;", cert, key)
	}
	conf := filepath.Join(dir, "nginx.conf")
	// Workers run as root, as this process: the files are in test
	// directories only root can read.
	config := fmt.Sprintf(`daemon off; user root; worker_processes 2; pid %[1]s/nginx.pid; error_log %[1]s/error.log;
events {}
http {
	access_log off; client_body_temp_path %[1]s/body; proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi; uwsgi_temp_path %[1]s/uwsgi; scgi_temp_path %[1]s/scgi;
	server { listen %[2]s; %[3]s root %[4]s; }
}
`, dir, listen, tls, root)
	if err := os.WriteFile(conf, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nginx", "-p", dir, "-c", conf)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// A group of its own: the workers go with the master.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-exited })
	// nginx writes its pid file once its sockets are bound; a listener
	// answering before that could be another process's.
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			return "", out.String(), fmt.Errorf("exited before serving: %v", err)
		case <-deadline:
			t.Fatalf("nginx did not start serving %s in 10 s: %s", addr, out)
		case <-time.After(20 * time.Millisecond):
		}
		if _, err := os.Stat(filepath.Join(dir, "nginx.pid")); err != nil {
			continue
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return scheme + "://" + addr, "", nil
		}
	}
}

// throwawayCA makes a CA and a certificate for 127.0.0.1 signed by it,
// as PEM files in dir.
func throwawayCA(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey, srvKey := newKey(), newKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "qcowmount test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", srvDER), write("server.key", "EC PRIVATE KEY", keyDER)
}

// servedImages makes, in dir, a zstd-compressed base under an overlay that
// names it relatively, an image with an internal snapshot, and one whose
// backing file is a local path.
func servedImages(t *testing.T, dir string) {
	t.Helper()
	plain := filepath.Join(dir, "plain.qcow2")
	qemutest.Create(t, plain, "qcow2", "8M")
	qemutest.IO(t, plain, "write -P 0x11 0 3M", "write -P 0x12 5M 1M")
	qemutest.Run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", plain, filepath.Join(dir, "base.qcow2"))
	os.Remove(plain)
	top := filepath.Join(dir, "top.qcow2")
	qemutest.Create(t, top, "qcow2", "8M", "backing_file=base.qcow2", "backing_fmt=qcow2")
	qemutest.IO(t, top, "write -P 0x21 1M 3M", "write -z 6M 64k")
	snap := filepath.Join(dir, "snap.qcow2")
	qemutest.Create(t, snap, "qcow2", "2M")
	qemutest.IO(t, snap, "write -P 0x31 0 1M")
	qemutest.Run(t, "qemu-img", "snapshot", "-c", "s1", snap)
	qemutest.IO(t, snap, "write -P 0x32 512k 1M")
	qemutest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw", filepath.Join(dir, "local-backing.qcow2"), "1M")
}

// TestRemoteImages mounts images from a real web server, over HTTP and
// HTTPS with a private CA: each reads as QEMU reads the local files.
func TestRemoteImages(t *testing.T) {
	requireFUSE(t)
	qemutest.Require(t, "qemu-img", "qemu-io")
	root := t.TempDir()
	servedImages(t, root)
	ca, cert, key := throwawayCA(t, t.TempDir())
	for _, tls := range []bool{false, true} {
		name, args := "http", []string(nil)
		base := ""
		if tls {
			name, args = "https", []string{"--ca-file", ca}
			base = startNginx(t, root, cert, key)
		} else {
			base = startNginx(t, root, "", "")
		}
		t.Run(name, func(t *testing.T) {
			tests := []struct {
				image string
				args  []string
				want  string
			}{
				{"top.qcow2", nil, qemutest.Raw(t, filepath.Join(root, "top.qcow2"))},
				{"snap.qcow2", []string{"--snapshot", "s1"}, qemutest.Raw(t, filepath.Join(root, "snap.qcow2"), "-l", "snapshot.name=s1")},
				{"snap.qcow2", nil, qemutest.Raw(t, filepath.Join(root, "snap.qcow2"))},
			}
			for _, tc := range tests {
				mnt := mountImage(t, base+"/"+tc.image, append(append([]string{}, args...), tc.args...)...)
				cmpFiles(t, filepath.Join(mnt, "disk.raw"), tc.want)
			}
			// export, hash and check read remote images the same way.
			exported := filepath.Join(t.TempDir(), "top.raw")
			if msg, code := run(t, append([]string{"export", base + "/top.qcow2", exported}, args...)...); code != 0 {
				t.Fatalf("export: exit %d: %s", code, msg)
			}
			cmpFiles(t, exported, tests[0].want)
			raw, err := os.ReadFile(tests[0].want)
			if err != nil {
				t.Fatal(err)
			}
			if msg, code := run(t, append([]string{"hash", base + "/top.qcow2"}, args...)...); code != 0 || msg != qemutest.SHA256(raw)+"  disk.raw\n" {
				t.Errorf("hash: exit %d: %s", code, msg)
			}
			if msg, code := run(t, append([]string{"check", base + "/top.qcow2"}, args...)...); code != 0 || !strings.HasPrefix(msg, "No errors were found on the image.") {
				t.Errorf("check: exit %d: %s", code, msg)
			}
			// --debug logs each range request.
			log := filepath.Join(t.TempDir(), "log")
			mnt := mountImage(t, base+"/top.qcow2", append([]string{"--debug", "--log-file", log}, args...)...)
			unmount(t, mnt)
			if b, err := os.ReadFile(log); err != nil || !strings.Contains(string(b), "http range request") || !strings.Contains(string(b), `"status": 206`) {
				t.Errorf("--debug logged no range requests: %v: %.500s", err, b)
			}
			out, code := run(t, append([]string{"info", base + "/top.qcow2?token=secret"}, args...)...)
			if code != 0 || !strings.Contains(out, "image: "+base+"/top.qcow2\n") || !strings.Contains(out, "backing file: base.qcow2 (actual path: "+base+"/base.qcow2)") ||
				!strings.Contains(out, "fetched ") || strings.Contains(out, "secret") {
				t.Errorf("info: exit %d: %s", code, out)
			}
			out, code = run(t, append([]string{base + "/local-backing.qcow2", t.TempDir()}, args...)...)
			if code != 3 || !strings.Contains(out, `"/etc/passwd" is an absolute path`) {
				t.Errorf("a local backing path in a remote image: exit %d: %s", code, out)
			}
		})
	}
	t.Run("https without the CA", func(t *testing.T) {
		base := startNginx(t, root, cert, key)
		out, code := run(t, "info", base+"/top.qcow2")
		if code != 3 || !strings.Contains(out, "certificate") {
			t.Fatalf("exit %d: %s", code, out)
		}
	})
}

// TestRemoteServerThatNeverAnswers: info of a URL whose server takes the
// connection and sends nothing gives up after --remote-timeout, retries
// included, saying why.
func TestRemoteServerThatNeverAnswers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	start := time.Now()
	out, code := run(t, "info", "--remote-timeout", "2s", "http://"+l.Addr().String()+"/disk.qcow2")
	took := time.Since(start)
	if code != 3 || !strings.Contains(out, "no complete answer in time (the limit for one fetch is 2s)") {
		t.Fatalf("exit %d: %s", code, out)
	}
	if took > 20*time.Second {
		t.Errorf("gave up after %v with --remote-timeout 2s", took)
	}
}
