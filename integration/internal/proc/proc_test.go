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
	// Burn a little more than one clock tick of CPU, then give it up.
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
	}
	time.Sleep(time.Millisecond)
	after, err := UsageOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after.CPU <= before.CPU {
		t.Errorf("CPU time went from %v to %v across 50 ms of work", before.CPU, after.CPU)
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
