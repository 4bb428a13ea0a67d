package block_test

import (
	"testing"
	"time"

	"github.com/carve-ipam/carve/block"
)

// cooledBlock returns a /30 whose 10.0.0.0 was released at released and
// whose other addresses are allocated.
func cooledBlock(t *testing.T, released time.Time) *block.Block {
	t.Helper()
	b := mustNew(t, "10.0.0.0/30", 1)
	b.Allocate(nil, 4, podA)
	if err := b.ReleaseAt(addr("10.0.0.0"), noChk, released); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCooldownCutoffAtEpoch: a cutoff of exactly 1970-01-01T00:00:00Z
// (time.Unix(0, 0), as a fake clock may give) holds back every address
// released since, as CoolingSince counts it. AllocateWith took the cutoff
// for "no cutoff" and handed the cooling address out.
func TestCooldownCutoffAtEpoch(t *testing.T) {
	epoch := time.Unix(0, 0)
	b := cooledBlock(t, time.Unix(100, 0))
	if n := b.CoolingSince(epoch); n != 1 {
		t.Fatalf("CoolingSince(epoch) = %d, want 1", n)
	}
	if got, _ := b.AllocateWith(nil, 1, podB, block.AllocOptions{ReleasedBefore: epoch}); len(got) != 0 {
		t.Fatalf("AllocateWith(ReleasedBefore: %v) handed out %v, released at %v", epoch, got, time.Unix(100, 0))
	}
}

// TestCooldownCutoffFarAway: cutoffs outside the years an int64 of
// nanoseconds covers (1678 to 2262) must still compare as times do, not
// wrap around: a cutoff in year 3000 is after every release time, one in
// year 1 before every one.
func TestCooldownCutoffFarAway(t *testing.T) {
	released := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	future := time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
	past := time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC)

	b := cooledBlock(t, released)
	if n := b.CoolingSince(future); n != 0 {
		t.Errorf("CoolingSince(%v) = %d, want 0", future, n)
	}
	if n := b.CoolingSince(past); n != 1 {
		t.Errorf("CoolingSince(%v) = %d, want 1", past, n)
	}
	if got, _ := b.Clone().AllocateWith(nil, 1, podB, block.AllocOptions{ReleasedBefore: future}); len(got) != 1 {
		t.Errorf("AllocateWith(ReleasedBefore: %v) handed out %v, want the address released at %v", future, got, released)
	}
	if got, _ := b.Clone().AllocateWith(nil, 1, podB, block.AllocOptions{ReleasedBefore: past}); len(got) != 0 {
		t.Errorf("AllocateWith(ReleasedBefore: %v) handed out %v", past, got)
	}
	if n := b.Clone().PruneReleased(past); n != 0 {
		t.Errorf("PruneReleased(%v) = %d, want 0", past, n)
	}
	if n := b.PruneReleased(future); n != 1 || b.ReleaseTimes() != 0 {
		t.Errorf("PruneReleased(%v) = %d, want 1; %d times kept", future, n, b.ReleaseTimes())
	}
}
