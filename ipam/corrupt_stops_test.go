package ipam_test

import (
	"bytes"
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// TestCorruptRecordStopsTheOperation pins what a corrupt record of
// each kind does to the operation that meets it: the operation fails with
// an error matching ErrCorrupt that names the record, assigns nothing,
// leaves the record as it was, and Check reports the record as
// "<kind> <key>".
func TestCorruptRecordStopsTheOperation(t *testing.T) {
	blk := netip.MustParsePrefix("10.0.0.0/26")
	for _, c := range []struct {
		name  string
		kind  ipam.Kind
		key   string
		value []byte
		names string // what the error must name
		op    func(e *env) error
	}{
		{"block held by the node", ipam.KindBlock, blockKeyOf(blk), []byte("junk"), "10.0.0.0/26", func(e *env) error {
			_, err := e.assign4("node-1", "h2", 1)
			return err
		}},
		{"block of another block's content", ipam.KindBlock, blockKeyOf(blk), nil, "10.0.0.0/26", func(e *env) error {
			_, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.0.0.9"), Handle: "h2", Node: "node-1"})
			return err
		}},
		{"handle of the request", ipam.KindHandle, "h", []byte{1, 1, 4}, `"h"`, func(e *env) error {
			_, err := e.assign4("node-1", "h", 1)
			return err
		}},
		{"affinity key of the node", ipam.KindAffinity, "host:node-1/v4:0A000040/26", nil, "host:node-1/v4:0A000040/26", func(e *env) error {
			_, err := e.assign4("node-1", "h2", 1)
			return err
		}},
		{"pools that overlap", ipam.KindPool, "default", []byte(`{"version":2,"pools":[{"name":"p","version":1,"spec":{"cidr":"10.0.0.0/24","blockSize":26}},{"name":"q","version":2,"spec":{"cidr":"10.0.0.0/25","blockSize":26}}]}`), "pool record", func(e *env) error {
			_, err := e.assign4("node-1", "h2", 1)
			return err
		}},
		{"config", ipam.KindConfig, "default", []byte(`{"maxBlocksPerHost":"many"}`), "config record", func(e *env) error {
			_, err := e.assign4("node-1", "h2", 1)
			return err
		}},
		{"reservation", ipam.KindReservation, "r1", []byte(`{"reservedCIDRs":["10.0.0.300/32"]}`), `"r1"`, func(e *env) error {
			_, err := e.assign4("node-1", "h2", 1)
			return err
		}},
		{"node labels", ipam.KindNode, "node-1", []byte(`{"labels":{}}`), `"node-1"`, func(e *env) error {
			_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h2", Node: "node-1", IPv4Pools: nil})
			return err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, pool.Pool{Name: "p", CIDR: netip.MustParsePrefix("10.0.0.0/24"), BlockSize: 26, NodeSelector: `!has(gone)`})
			_, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.0.0.1"), Handle: "h", Node: "node-1"})
			require.NoError(t, err)
			_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.0.0.70"), Handle: "other", Node: "node-2"})
			require.NoError(t, err)
			value := c.value
			if value == nil && c.kind == ipam.KindBlock {
				other, err := e.store.Get(e.ctx, ipam.KindBlock, blockKeyOf(netip.MustParsePrefix("10.0.0.64/26")))
				require.NoError(t, err)
				value = other.Value
			}
			putRaw(t, e.store, c.kind, c.key, value)
			inUse := e.utilizationOrZero()

			err = c.op(e)
			require.ErrorIs(t, err, ipam.ErrCorrupt)
			require.ErrorContains(t, err, c.names)
			require.NotErrorIs(t, err, ipam.ErrInvalid)
			rec, gerr := e.store.Get(e.ctx, c.kind, c.key)
			require.NoError(t, gerr)
			require.True(t, bytes.Equal(value, rec.Value), "the corrupt record was rewritten")
			require.Equal(t, inUse, e.utilizationOrZero(), "the failed operation assigned")

			r, err := e.a.Check(e.ctx)
			require.NoError(t, err)
			found := false
			for _, p := range r.Problems {
				found = found || p.Record == c.kind.String()+" "+c.key && (p.Kind == ipam.ProblemCorrupt || p.Kind == ipam.ProblemConfig)
			}
			require.True(t, found, "Check does not report %s %q: %v", c.kind, c.key, r.Problems)
		})
	}
}

// utilizationOrZero counts the addresses in use in every decodable block.
func (e *env) utilizationOrZero() int {
	recs, err := e.store.List(context.Background(), ipam.KindBlock, ipam.KeyRange{})
	require.NoError(e.t, err)
	n := 0
	for _, r := range recs {
		if s, err := ipam.PeekRecord(e.a, r); err == nil {
			n += s.Used
		}
	}
	return n
}
