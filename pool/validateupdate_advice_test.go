package pool_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

// ValidateUpdate and Set.Update check the same replacement and must say
// the same thing. Enabling a disabled pool smaller than one block, Set.Update
// explains that blockSize cannot change; ValidateUpdate advised changing
// blockSize, which it refuses itself (ErrImmutable) when the user follows the
// advice.
func TestValidateUpdateSameAsSetUpdate(t *testing.T) {
	old := pool.Pool{Name: "tiny", CIDR: netip.MustParsePrefix("10.0.0.0/28"), Disabled: true}
	var s pool.Set
	require.NoError(t, s.Add(old))
	enabled := old
	enabled.Disabled = false

	setErr := s.Update(enabled)
	require.ErrorIs(t, setErr, pool.ErrBlockSize)
	err := pool.ValidateUpdate(old, enabled)
	require.ErrorIs(t, err, pool.ErrBlockSize)
	require.EqualError(t, err, setErr.Error())

	// Following the advice of the old message is refused.
	enabled.BlockSize = 28
	require.ErrorIs(t, pool.ValidateUpdate(old, enabled), pool.ErrImmutable)
}
