package ipam_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// TestModifyPool: ModifyPool applies a change to the pool as stored, keeps
// a concurrent change to another field (it applies its change again to a
// fresh read), writes nothing for a change that changes nothing, and
// refuses what UpdatePool refuses, changing nothing.
func TestModifyPool(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/16", 26))
	other := e.allocator()
	before, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)

	t.Run("a change meets another", func(t *testing.T) {
		calls := 0
		got, err := e.a.ModifyPool(e.ctx, "p", func(p *pool.Pool) error {
			if calls++; calls == 1 {
				require.NoError(t, other.DisablePool(e.ctx, "p")) // meanwhile, elsewhere
			}
			p.NodeSelector = `rack == "r1"`
			return nil
		})
		require.NoError(t, err)
		require.Equal(t, 2, calls, "the change is applied again to the pool as changed")
		require.Equal(t, `rack == "r1"`, got.NodeSelector)
		require.True(t, got.Disabled, "the other change stands")
		stored, err := e.a.Pool(e.ctx, "p")
		require.NoError(t, err)
		require.Equal(t, stored.String(), got.String())
		require.Greater(t, got.Version, before.Version)
	})

	t.Run("no change", func(t *testing.T) {
		stored, err := e.a.Pool(e.ctx, "p")
		require.NoError(t, err)
		got, err := e.a.ModifyPool(e.ctx, "p", func(p *pool.Pool) error {
			p.NodeSelector = `rack == "r1"`
			return nil
		})
		require.NoError(t, err)
		require.Equal(t, stored.Version, got.Version, "nothing written")
	})

	for _, c := range []struct {
		name   string
		change func(p *pool.Pool) error
		want   error
	}{
		{"the change fails", func(p *pool.Pool) error { p.Disabled = false; return errStop }, errStop},
		{"renamed", func(p *pool.Pool) error { p.Name = "q"; return nil }, ipam.ErrInvalid},
		{"another block size", func(p *pool.Pool) error { p.BlockSize = 28; return nil }, pool.ErrImmutable},
		{"an invalid selector", func(p *pool.Pool) error { p.NodeSelector = "rack ==="; return nil }, pool.ErrSelector},
	} {
		t.Run(c.name, func(t *testing.T) {
			stored, err := e.a.Pool(e.ctx, "p")
			require.NoError(t, err)
			_, err = e.a.ModifyPool(e.ctx, "p", c.change)
			require.ErrorIs(t, err, c.want)
			require.Contains(t, err.Error(), `"p"`, "the error names the pool")
			after, err := e.a.Pool(e.ctx, "p")
			require.NoError(t, err)
			require.Equal(t, stored.String(), after.String(), "nothing changed")
		})
	}

	_, err = e.a.ModifyPool(e.ctx, "none", func(p *pool.Pool) error { return nil })
	require.ErrorIs(t, err, ipam.ErrPoolNotFound)
	_, err = e.a.ModifyPool(e.ctx, "p", nil)
	require.ErrorIs(t, err, ipam.ErrInvalid)
}

var errStop = errors.New("stop")

// TestPoolsReturnCopies: a pool read from the allocator is the caller's to
// change; changing its slices does not change the allocator's pools,
// which serve its next requests.
func TestPoolsReturnCopies(t *testing.T) {
	e := newEnv(t, pool.Pool{Name: "lb", CIDR: mustPrefix("192.168.0.0/24"), BlockSize: 28, AllowedUses: []pool.Use{pool.UseLoadBalancer}})
	for _, read := range []string{"Pool", "Pools"} {
		t.Run(read, func(t *testing.T) {
			var p pool.Pool
			if read == "Pool" {
				var err error
				p, err = e.a.Pool(e.ctx, "lb")
				require.NoError(t, err)
			} else {
				ps, err := e.a.Pools(e.ctx)
				require.NoError(t, err)
				p = ps[0]
			}
			p.AllowedUses[0] = pool.UseWorkload
			_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "svc-" + read, Use: pool.UseLoadBalancer})
			require.NoError(t, err, "the pool still allows LoadBalancer addresses")
			again, err := e.a.Pool(e.ctx, "lb")
			require.NoError(t, err)
			require.Equal(t, []pool.Use{pool.UseLoadBalancer}, again.AllowedUses)
		})
	}
}
