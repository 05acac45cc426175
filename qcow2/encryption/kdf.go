package encryption

import (
	"crypto/hmac"
	"crypto/subtle"
	"encoding/binary"
	"runtime"
	"sync"
	"time"
)

// pbkdf2Key is PBKDF2 (RFC 8018) with HMAC over h, each block of the
// output derived on a goroutine of its own. Every block takes the full
// iteration count, and LUKS keys often span several: AES-256-XTS's 64
// bytes are two SHA-256 blocks, which QEMU derives one after the other.
// (crypto/pbkdf2 computes the same, one block after another.)
func pbkdf2Key(h hashFunc, password, salt []byte, iter, keyLen int) []byte {
	size := h().Size()
	blocks := (keyLen + size - 1) / size
	out := make([]byte, blocks*size)
	var wg sync.WaitGroup
	for b := range blocks {
		wg.Go(func() {
			prf := hmac.New(h, password)
			prf.Write(salt)
			prf.Write(binary.BigEndian.AppendUint32(nil, uint32(b+1)))
			u := prf.Sum(nil)
			t := out[b*size : (b+1)*size]
			copy(t, u)
			for range iter - 1 {
				prf.Reset()
				prf.Write(u)
				u = prf.Sum(u[:0])
				subtle.XORBytes(t, t, u)
			}
			clear(u)
		})
	}
	wg.Wait()
	return out[:keyLen]
}

// Below this many hash iterations PBKDF2 takes well under a second on
// any native machine: not worth measuring. (Under an emulator it can
// take seconds; a plan of such slots is still bounded by this much.)
const cheapIterations = 1 << 18

var (
	rateMu sync.Mutex
	rates  = map[string]float64{} // PBKDF2 iterations a second, by hash
)

// kdfRate is this machine's speed at PBKDF2 with hash h (named name), in
// iterations a second on one CPU, measured once per hash.
func kdfRate(h hashFunc, name string) float64 {
	rateMu.Lock()
	rate, ok := rates[name]
	rateMu.Unlock()
	if !ok {
		rate = measureRate(h, h().Size())
		rateMu.Lock()
		rates[name] = rate
		rateMu.Unlock()
	}
	return rate
}

// kdfWork is the cost of PBKDF2 for a key of keyLen bytes: hash
// iterations in all, and those of one output block, which is as far as
// they can be spread over CPUs.
func kdfWork(h hashFunc, iters uint32, keyLen int) (total, chain float64) {
	size := h().Size()
	blocks := (keyLen + size - 1) / size
	return float64(iters) * float64(blocks), float64(iters)
}

// measureRate times PBKDF2 on one output block, doubling the iterations
// until a run takes long enough to measure. A first run is not timed: it
// pays for what runs once (page faults; under an emulator, translating
// the code), which would make the rate look several times too low.
func measureRate(h hashFunc, size int) float64 {
	pbkdf2Key(h, []byte("qcowmount"), make([]byte, luksSaltBytes), 1<<10, size)
	for n := 1 << 12; ; n *= 2 {
		start := time.Now()
		pbkdf2Key(h, []byte("qcowmount"), make([]byte, luksSaltBytes), n, size)
		if d := time.Since(start); d >= 20*time.Millisecond || n >= 1<<24 {
			return float64(n) / d.Seconds()
		}
	}
}

func cpus() int { return runtime.GOMAXPROCS(0) }
