package ipam

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/carve-ipam/carve/block"
)

// SetSleep replaces the wait of Repair's settle time.
func SetSleep(a *Allocator, f func(ctx context.Context, d time.Duration) error) { a.sleep = f }

// DecodeHandle decodes a handle record's value into its per-block counts.
func DecodeHandle(value []byte) (map[netip.Prefix]int, error) {
	var h handleRecord
	if err := h.unmarshal(value); err != nil {
		return nil, err
	}
	out := map[netip.Prefix]int{}
	for _, c := range h.entries() {
		out[c.block] = c.count
	}
	return out, nil
}

// EncodeHandle encodes per-block counts as a handle record's value.
func EncodeHandle(counts map[netip.Prefix]int) []byte {
	var h handleRecord
	for _, blk := range slices.SortedFunc(maps.Keys(counts), comparePrefix) {
		h.put(blk, counts[blk])
	}
	return h.appendBinary(nil)
}

// SetLane turns AutoAssign's lane on or off (see autoAssignLane); it is on
// for every allocator New makes.
func SetLane(a *Allocator, on bool) { a.noLane = !on }

// SetLaneTrace has f hear of each request the lane serves, and whether it
// went on in autoAssign after its attempt.
func SetLaneTrace(a *Allocator, f func(resumed bool)) { a.laneTrace = f }

// PeekRecord is the allocator's cached block.Peek of a listed block record.
func PeekRecord(a *Allocator, r Record) (block.Summary, error) { return a.peek(r) }
