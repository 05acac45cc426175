package proc

import (
	"os"
	"testing"
	"time"
)

func TestUsageOfCountsThisProcess(t *testing.T) {
	before, err := UsageOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until the kernel's clock of this process moves (it counts
	// in ticks of 10 ms): on a loaded machine wall time is not CPU time,
	// so no fixed span of work is sure to move it. A clock that has not
	// moved after 10 s of work is broken.
	after := before
	for start := time.Now(); after.CPU <= before.CPU && time.Since(start) < 10*time.Second; {
		for spin := time.Now(); time.Since(spin) < 20*time.Millisecond; {
		}
		if after, err = UsageOf(os.Getpid()); err != nil {
			t.Fatal(err)
		}
	}
	if after.CPU <= before.CPU {
		t.Errorf("CPU time went from %v to %v across 10 s of work", before.CPU, after.CPU)
	}
	time.Sleep(time.Millisecond)
	if after, err = UsageOf(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if after.Switches <= before.Switches {
		t.Errorf("context switches went from %d to %d across a sleep", before.Switches, after.Switches)
	}
}

func TestUsageOfMissingProcess(t *testing.T) {
	// Above any pid_max Linux allows (4194304).
	if _, err := UsageOf(1 << 23); err == nil {
		t.Error("no error for a process that cannot exist")
	}
}
