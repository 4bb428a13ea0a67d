package ipam_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// TestModifyPoolRuleErrors: a change that renames the pool fails with
// ErrInvalid (a misuse of the change function), while one that changes
// the CIDR, the block size or a LoadBalancer pool's kind fails with a
// *pool.ValidationError, as ModifyPool's doc says; none changes anything.
func TestModifyPoolRuleErrors(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/26", 28),
		pool.Pool{Name: "lb", CIDR: mustPrefix("10.2.0.0/26"), BlockSize: 28, AllowedUses: []pool.Use{pool.UseLoadBalancer}})
	for _, c := range []struct {
		name, pool string
		change     func(p *pool.Pool)
		validation bool
	}{
		{"rename", "p", func(p *pool.Pool) { p.Name = "q" }, false},
		{"cidr", "p", func(p *pool.Pool) { p.CIDR = mustPrefix("10.0.0.0/25") }, true},
		{"block size", "p", func(p *pool.Pool) { p.BlockSize = 27 }, true},
		{"load balancer kind", "lb", func(p *pool.Pool) { p.AllowedUses = []pool.Use{pool.UseWorkload} }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			before, err := e.a.Pool(e.ctx, c.pool)
			require.NoError(t, err)
			_, err = e.a.ModifyPool(e.ctx, c.pool, func(p *pool.Pool) error { c.change(p); return nil })
			var ve *pool.ValidationError
			require.Equal(t, c.validation, errors.As(err, &ve), "%v", err)
			if c.validation {
				require.ErrorIs(t, err, pool.ErrImmutable)
			} else {
				require.ErrorIs(t, err, ipam.ErrInvalid)
			}
			after, err := e.a.Pool(e.ctx, c.pool)
			require.NoError(t, err)
			require.Equal(t, before.String(), after.String())
			require.Equal(t, before.Version, after.Version)
		})
	}
}
