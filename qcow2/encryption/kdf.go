package encryption

import (
	"crypto/pbkdf2"
	"runtime"
	"sync"
	"time"
)

// Below this many hash iterations PBKDF2 takes well under a second on
// any machine we run on: not worth measuring.
const cheapIterations = 1 << 18

var (
	rateMu sync.Mutex
	rates  = map[string]float64{} // PBKDF2 iterations a second, by hash
)

// kdfTime estimates how long PBKDF2 with hash h (named name) takes for
// iters iterations and a key of keyLen bytes, from this machine's speed,
// measured once per hash. Each block of the output costs the iterations
// again.
func kdfTime(h hashFunc, name string, iters uint32, keyLen int) time.Duration {
	size := h().Size()
	work := float64(iters) * float64((keyLen+size-1)/size)
	if work < cheapIterations {
		return 0
	}
	rateMu.Lock()
	rate, ok := rates[name]
	rateMu.Unlock()
	if !ok {
		rate = measureRate(h, size)
		rateMu.Lock()
		rates[name] = rate
		rateMu.Unlock()
	}
	return time.Duration(work / rate * float64(time.Second))
}

// measureRate times PBKDF2 on one output block, doubling the iterations
// until a run takes long enough to measure.
func measureRate(h hashFunc, size int) float64 {
	for n := 1 << 12; ; n *= 2 {
		start := time.Now()
		if _, err := pbkdf2.Key(h, "qcowmount", make([]byte, luksSaltBytes), n, size); err != nil {
			return 1 // cannot measure: every large count is too slow
		}
		if d := time.Since(start); d >= 20*time.Millisecond || n >= 1<<24 {
			return float64(n) / d.Seconds()
		}
	}
}

func cpus() int { return runtime.GOMAXPROCS(0) }
