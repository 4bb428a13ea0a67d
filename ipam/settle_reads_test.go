package ipam_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
)

// TestSettleReadsNoRecord: an AssignIPs across two blocks, every
// address assigned, has no spare left to lower when it settles its
// reservation. Nothing to lower must not cost a read of the handle's
// record (handleTx.unchanged re-reads only a lowering that found too little
// to lower): the request reads the record only as before the fix, once
// with a handle that exists and never with a new one.
func TestSettleReadsNoRecord(t *testing.T) {
	for _, plain := range []bool{false, true} {
		e := newEnv(t, v4pool("p4", "10.0.0.0/24", 26), v6pool("p6", "fd00::/120", 122))
		var s ipam.Store = e.store
		if plain {
			s = plainStore{e.store}
		}
		counting := storetest.NewCountingStore(s)
		a, err := ipam.New(counting, ipam.Options{})
		require.NoError(t, err)
		_, err = a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.1"), mustAddr("fd00::1")}, Handle: "warm", Node: "n"})
		require.NoError(t, err)
		before, _ := storetest.CountsOf(counting)
		_, err = a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.5"), mustAddr("fd00::5")}, Handle: "h", Node: "n"})
		require.NoError(t, err)
		after, _ := storetest.CountsOf(counting)
		ops := after.Sub(before)
		t.Logf("plain=%t: %s", plain, ops)
		require.LessOrEqual(t, ops.Of(storetest.OpGet, ipam.KindHandle), int64(1), "plain=%t: reads of the handle record: %s", plain, ops)
		e.requireConsistent()
	}
}
