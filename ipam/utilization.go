package ipam

import (
	"context"
	"fmt"
	"math/big"
	"net/netip"
	"time"

	"go4.org/netipx"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/internal/ipmath"
)

// PoolUtilization is how much of a pool is in use.
type PoolUtilization struct {
	// Name and CIDR identify the pool. The entry for blocks outside every
	// pool (left behind by deleted pools) has an empty Name and an invalid
	// CIDR.
	Name string
	CIDR netip.Prefix
	// Disabled says that the pool is disabled: AutoAssign hands out none
	// of its Free addresses until it is enabled again. A sum of the room
	// left for new workloads skips such pools (during a migration, the
	// old one).
	Disabled bool

	// Capacity is the number of addresses in the pool: a big number for
	// IPv6 (a /48 holds 2^80). Capacity = InUse + Reserved + Cooling + Free.
	Capacity *big.Int
	// InUse counts assigned addresses; Borrowed counts those among them
	// assigned for an owner other than their block's (see
	// BlockUtilization.Borrowed).
	InUse, Borrowed uint64
	// Reserved counts the addresses that are not assigned and cannot be
	// assigned automatically: reserved in their block, or inside a
	// Reservation (in existing blocks or not).
	Reserved *big.Int
	// Cooling counts free addresses released Config.ReleaseCooldown ago
	// or less, outside reservations: a cooling address
	// that is also reserved counts as Reserved, so that each address
	// counts once.
	Cooling uint64
	// Free counts the addresses neither in use, reserved nor cooling: what
	// AutoAssign could still hand out from the pool while it is enabled,
	// to the requests its selectors, assignment mode and allowed uses
	// admit. In the entry for blocks outside every pool it counts their
	// unassigned addresses, which nothing hands out: AutoAssign only uses
	// pools' blocks.
	Free *big.Int

	// Blocks lists the pool's existing blocks in address order.
	Blocks []BlockUtilization
}

// BlockUtilization is how much of one block is in use.
type BlockUtilization struct {
	Prefix   netip.Prefix
	Affinity block.Affinity
	// Capacity = InUse + Reserved + Cooling + Free.
	Capacity, InUse, Reserved, Cooling, Free int
	// Borrowed counts addresses assigned for an owner other than the
	// block's. An address's owner is the node its AttrNode names, or
	// VirtualLoadBalancer when it names none (a LoadBalancer address). In
	// a block without affinity every address counts. Allocation.Borrowed
	// picks out the same addresses from Allocations.
	Borrowed int
}

// Utilization reports every pool's use, block by block, read fresh from
// the store. It lists all blocks, so it is meant for reports and checks,
// not for a hot path.
func (a *Allocator) Utilization(ctx context.Context) ([]PoolUtilization, error) {
	v, err := a.readView(ctx)
	if err != nil {
		return nil, err
	}
	var cutoff time.Time
	if c := v.config.ReleaseCooldown; c > 0 {
		cutoff = a.now().Add(-c)
	}
	pools := v.pools.All()
	out := make([]PoolUtilization, len(pools), len(pools)+1)
	inBlocks := make([]*big.Int, len(pools)+1) // reserved addresses counted in existing blocks
	for i, p := range pools {
		out[i] = PoolUtilization{Name: p.Name, CIDR: p.CIDR, Disabled: p.Disabled,
			Capacity: bigPow2(ipmath.HostBits(p.CIDR)), Reserved: reservedIn(v, p.CIDR)}
		inBlocks[i] = new(big.Int)
	}
	recs, err := a.store.List(ctx, KindBlock, KeyRange{})
	if err != nil {
		return nil, fmt.Errorf("ipam: utilization: list blocks: %w", err)
	}
	orphan := -1
	for _, r := range recs {
		blk, err := parseBlockKey(r.Key)
		if err != nil {
			return nil, fmt.Errorf("ipam: utilization: %w: %w", ErrCorrupt, err)
		}
		b, err := decodeBlock(blk, r.Value)
		if err != nil {
			return nil, err
		}
		bu, inResv := blockUtilization(v, b, cutoff)
		k := -1
		if p, ok := v.pools.ByAddr(blk.Addr()); ok && p.CIDR.Bits() <= blk.Bits() {
			for i := range pools {
				if pools[i] == p {
					k = i
				}
			}
		}
		if k < 0 {
			if orphan < 0 {
				out = append(out, PoolUtilization{Capacity: new(big.Int), Reserved: new(big.Int)})
				orphan = len(out) - 1
				inBlocks[orphan] = new(big.Int)
			}
			k = orphan
			out[k].Capacity.Add(out[k].Capacity, big.NewInt(int64(bu.Capacity)))
		}
		pu := &out[k]
		pu.Blocks = append(pu.Blocks, bu)
		pu.InUse += uint64(bu.InUse)
		pu.Borrowed += uint64(bu.Borrowed)
		pu.Cooling += uint64(bu.Cooling)
		// The block's reserved count replaces what the reservations alone
		// said of its addresses.
		pu.Reserved.Add(pu.Reserved, big.NewInt(int64(bu.Reserved)))
		if k != orphan {
			inBlocks[k].Add(inBlocks[k], big.NewInt(int64(inResv)))
		}
	}
	for i := range out {
		pu := &out[i]
		pu.Reserved.Sub(pu.Reserved, inBlocks[i])
		pu.Free = new(big.Int).Sub(pu.Capacity, pu.Reserved)
		pu.Free.Sub(pu.Free, new(big.Int).SetUint64(pu.InUse+pu.Cooling))
	}
	return out, nil
}

// reservedIn counts the reserved addresses inside cidr.
func reservedIn(v *view, cidr netip.Prefix) *big.Int {
	n := new(big.Int)
	if !v.hasReserved || !v.reserved.OverlapsPrefix(cidr) {
		return n
	}
	var sb netipx.IPSetBuilder
	sb.AddPrefix(cidr)
	sb.Intersect(v.reserved)
	s, _ := sb.IPSet()
	for _, p := range s.Prefixes() {
		n.Add(n, bigPow2(ipmath.HostBits(p)))
	}
	return n
}

// blockUtilization classifies every address of b. It also returns how many
// of b's addresses lie inside reservations, whatever their state.
func blockUtilization(v *view, b *block.Block, cutoff time.Time) (BlockUtilization, int) {
	bu := BlockUtilization{Prefix: b.Prefix(), Affinity: b.Affinity(), Capacity: b.Size(), InUse: b.Used(), Reserved: b.Reserved()}
	aff := b.Affinity()
	for o, n := range b.Owners() {
		if aff != allocOwner(o.Attrs) { // never the zero affinity
			bu.Borrowed += n
		}
	}
	inResv := 0
	resv := v.hasReserved && v.reserved.OverlapsPrefix(b.Prefix())
	if resv || (!cutoff.IsZero() && b.CoolingSince(cutoff) > 0) {
		// Look at each address: in a reservation, cooling, or free.
		bu.Reserved, bu.Cooling = 0, 0
		addr := b.Prefix().Addr()
		for range b.Size() {
			_, used := b.Owner(addr)
			inR := resv && v.reserved.Contains(addr)
			if inR {
				inResv++
			}
			switch {
			case used:
			case b.IsReserved(addr) || inR:
				bu.Reserved++
			default:
				if at, ok := b.ReleasedAt(addr); ok && !cutoff.IsZero() && !at.Before(cutoff) {
					bu.Cooling++
				}
			}
			addr = addr.Next()
		}
	}
	bu.Free = bu.Capacity - bu.InUse - bu.Reserved - bu.Cooling
	return bu, inResv
}

func bigPow2(n int) *big.Int { return new(big.Int).Lsh(big.NewInt(1), uint(n)) }

// allocOwner is the owner an allocation was made for: the node its
// AttrNode names or, when it names none, the virtual LoadBalancer owner
// (AutoAssign and AssignIP record the node of every other request).
func allocOwner(attrs map[string]string) block.Affinity {
	if node, ok := attrs[AttrNode]; ok {
		return block.Host(node)
	}
	return loadBalancerOwner
}
