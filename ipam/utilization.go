package ipam

import (
	"context"
	"fmt"
	"math/big"
	"net/netip"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/internal/ipmath"
)

// PoolUtilization is how much of a pool is in use.
type PoolUtilization struct {
	// Name and CIDR identify the pool. The entry for blocks outside every
	// pool (left behind by deleted pools) has an empty Name and an invalid
	// CIDR.
	Name     string
	CIDR     netip.Prefix
	Disabled bool

	// Capacity is the number of addresses in the pool; a big number for
	// IPv6 (a /48 holds 2^80).
	Capacity *big.Int
	// Free is Capacity minus InUse minus Reserved.
	Free *big.Int
	// InUse counts assigned addresses; Borrowed counts those among them
	// assigned for a node other than their block's (see AttrNode);
	// Reserved counts addresses reserved inside the pool's blocks.
	InUse, Borrowed, Reserved uint64

	// Blocks lists the pool's existing blocks in address order.
	Blocks []BlockUtilization
}

// BlockUtilization is how much of one block is in use.
type BlockUtilization struct {
	Prefix   netip.Prefix
	Affinity block.Affinity
	// Capacity = InUse + Free + Reserved.
	Capacity, InUse, Free, Reserved int
	// Borrowed counts addresses assigned for a node other than the block's
	// (all that name a node, when the block has no affinity).
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
	pools := v.pools.All()
	out := make([]PoolUtilization, len(pools), len(pools)+1)
	for i, p := range pools {
		capacity := bigPow2(ipmath.HostBits(p.CIDR))
		out[i] = PoolUtilization{Name: p.Name, CIDR: p.CIDR, Disabled: p.Disabled, Capacity: capacity}
	}
	var orphans *PoolUtilization
	recs, err := a.store.List(ctx, KindBlock, KeyRange{})
	if err != nil {
		return nil, fmt.Errorf("ipam: utilization: list blocks: %w", err)
	}
	for _, r := range recs {
		blk, err := parseBlockKey(r.Key)
		if err != nil {
			return nil, fmt.Errorf("ipam: utilization: %w: %w", ErrCorrupt, err)
		}
		b, err := decodeBlock(blk, r.Value)
		if err != nil {
			return nil, err
		}
		bu := blockUtilization(b)
		var pu *PoolUtilization
		if p, ok := v.pools.ByAddr(blk.Addr()); ok && p.CIDR.Bits() <= blk.Bits() {
			for i := range out {
				if out[i].Name == p.Name {
					pu = &out[i]
				}
			}
		}
		if pu == nil {
			if orphans == nil {
				out = append(out, PoolUtilization{Capacity: new(big.Int)})
				orphans = &out[len(out)-1]
			}
			pu = orphans
			pu.Capacity.Add(pu.Capacity, big.NewInt(int64(bu.Capacity)))
		}
		pu.Blocks = append(pu.Blocks, bu)
		pu.InUse += uint64(bu.InUse)
		pu.Borrowed += uint64(bu.Borrowed)
		pu.Reserved += uint64(bu.Reserved)
	}
	for i := range out {
		pu := &out[i]
		pu.Free = new(big.Int).Sub(pu.Capacity, new(big.Int).SetUint64(pu.InUse+pu.Reserved))
	}
	return out, nil
}

func blockUtilization(b *block.Block) BlockUtilization {
	bu := BlockUtilization{
		Prefix: b.Prefix(), Affinity: b.Affinity(),
		Capacity: b.Size(), InUse: b.Used(), Free: b.Free(), Reserved: b.Reserved(),
	}
	aff := b.Affinity()
	for o, n := range b.Owners() {
		node, ok := o.Attrs[AttrNode]
		if !ok {
			continue
		}
		if aff.Kind != block.HostAffinity || node != aff.Name {
			bu.Borrowed += n
		}
	}
	return bu
}

func bigPow2(n int) *big.Int { return new(big.Int).Lsh(big.NewInt(1), uint(n)) }
