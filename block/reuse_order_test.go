package block_test

import (
	"net/netip"
	"slices"
	"testing"
)

// TestReuseBehindCursorInAddressOrder pins what next-fit does with
// several addresses released behind the cursor: they come back after the
// free addresses ahead of it, in address order, not in the order they were
// released (Calico's FIFO would give back 10.0.0.4 first here).
func TestReuseBehindCursorInAddressOrder(t *testing.T) {
	b := mustNew(t, "10.0.0.0/29", 0)
	b.Allocate(nil, 6, podA) // .0 to .5; the cursor is at .6
	for _, a := range []string{"10.0.0.4", "10.0.0.1"} {
		if err := b.Release(addr(a), noChk); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := b.Allocate(nil, 4, podB)
	want := []netip.Addr{addr("10.0.0.6"), addr("10.0.0.7"), addr("10.0.0.1"), addr("10.0.0.4")}
	if !slices.Equal(got, want) {
		t.Fatalf("Allocate = %v, want %v", got, want)
	}
}
