package ipam_test

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestUpdatePoolFromAnOldRead: an update made from a read that another
// change overtook is refused, so it cannot undo that change (here: enable
// a pool someone disabled meanwhile); made again from a fresh read, it
// keeps both changes.
func TestUpdatePoolFromAnOldRead(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	read, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	require.NotZero(t, read.Version)

	require.NoError(t, e.allocator().DisablePool(e.ctx, "p"), "another process disables the pool")

	read.NodeSelector = `rack == "r1"`
	err = e.a.UpdatePool(e.ctx, read)
	require.ErrorIs(t, err, ipam.ErrPoolChanged)
	require.NotErrorIs(t, err, ipam.ErrTooManyConflicts, "refused, not retried")
	require.ErrorContains(t, err, `update pool "p"`)
	stored, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	require.True(t, stored.Disabled, "the pool stays disabled")
	require.Equal(t, "all()", stored.NodeSelector, "nothing of the update was written")

	stored.NodeSelector = `rack == "r1"`
	require.NoError(t, e.a.UpdatePool(e.ctx, stored), "made again from a fresh read")
	got, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	require.True(t, got.Disabled)
	require.Equal(t, `rack == "r1"`, got.NodeSelector)
	require.Greater(t, got.Version, stored.Version)

	// The pool as just written can be updated again; a zero Version skips
	// the check (a manifest applied as it is).
	got.NamespaceSelector = "all()"
	require.NoError(t, e.a.UpdatePool(e.ctx, got))
	read.Version = 0
	require.NoError(t, e.a.UpdatePool(e.ctx, read))
	got, err = e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	require.False(t, got.Disabled, "an unconditional update writes what it is given")
}

// TestPoolVersions: every change gives the pools it changes a new version,
// Pool and Pools return it, and a name never gets a version twice, not even
// when the pool is deleted and created again over the same range: an
// update made from the first pool is refused by the second.
func TestPoolVersions(t *testing.T) {
	e := newEnv(t, v4pool("a", "10.0.0.0/24", 26), v4pool("b", "10.1.0.0/24", 26))
	version := func(name string) uint64 {
		t.Helper()
		p, err := e.a.Pool(e.ctx, name)
		require.NoError(t, err)
		return p.Version
	}
	seen := map[uint64]string{}
	fresh := func(name, after string) uint64 {
		t.Helper()
		v := version(name)
		require.NotZero(t, v, "%s after %s", name, after)
		if was, ok := seen[v]; ok {
			require.Failf(t, "version repeated", "%s after %s has version %d, as %s had", name, after, v, was)
		}
		seen[v] = name + " after " + after
		return v
	}
	fresh("a", "create")
	fresh("b", "create")
	b := version("b")

	p, err := e.a.Pool(e.ctx, "a")
	require.NoError(t, err)
	old := p
	p.NodeSelector = `rack == "r1"`
	require.NoError(t, e.a.UpdatePool(e.ctx, p))
	fresh("a", "update")
	require.NoError(t, e.a.DisablePool(e.ctx, "a"))
	fresh("a", "disable")
	require.NoError(t, e.a.EnablePool(e.ctx, "a"))
	fresh("a", "enable")
	require.Equal(t, b, version("b"), "a change of a leaves b's version")

	all, err := e.a.Pools(e.ctx)
	require.NoError(t, err)
	require.Len(t, all, 2)
	require.Equal(t, version("a"), all[0].Version)
	require.Equal(t, b, all[1].Version)

	parts, err := e.a.SplitPool(e.ctx, "a", "a", "a2")
	require.NoError(t, err)
	require.Equal(t, version("a"), parts[0].Version, "SplitPool returns the parts as stored")
	require.Equal(t, version("a2"), parts[1].Version)
	fresh("a", "split")
	require.NoError(t, e.a.UpdatePool(e.ctx, parts[1]), "a part returned by SplitPool can be updated as it is")

	require.NoError(t, e.a.DeletePool(e.ctx, "b"))
	require.NoError(t, e.a.CreatePool(e.ctx, v4pool("b", "10.1.0.0/24", 26)))
	fresh("b", "delete and create")
	stale, err := e.a.Pool(e.ctx, "b")
	require.NoError(t, err)
	stale.Version = b
	stale.Disabled = true
	require.ErrorIs(t, e.a.UpdatePool(e.ctx, stale), ipam.ErrPoolChanged, "a read of the deleted pool")

	old.Disabled = true
	require.ErrorIs(t, e.a.UpdatePool(e.ctx, old), ipam.ErrPoolChanged, "a read from before the split")
}

// TestPoolNoChangeNoWrite: disabling a disabled pool, enabling an enabled
// one, or updating a pool to the spec it has, writes nothing, so it neither costs a write nor changes the
// pool's version (which would refuse updates made from a read that is
// still right).
func TestPoolNoChangeNoWrite(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	read, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	before, err := e.store.Get(e.ctx, ipam.KindPool, "default")
	require.NoError(t, err)
	require.NoError(t, e.a.EnablePool(e.ctx, "p"))
	after, err := e.store.Get(e.ctx, ipam.KindPool, "default")
	require.NoError(t, err)
	require.Equal(t, before.Revision, after.Revision, "the pool record is not written")

	read.NodeSelector = `rack == "r1"`
	require.NoError(t, e.a.UpdatePool(e.ctx, read), "the read is still the stored version")

	require.NoError(t, e.a.DisablePool(e.ctx, "p"))
	before, err = e.store.Get(e.ctx, ipam.KindPool, "default")
	require.NoError(t, err)
	require.NoError(t, e.a.DisablePool(e.ctx, "p"))
	after, err = e.store.Get(e.ctx, ipam.KindPool, "default")
	require.NoError(t, err)
	require.Equal(t, before.Revision, after.Revision)

	// An update to the spec stored (a manifest applied again, without a
	// version, and with its defaults left out) writes nothing either, so
	// an update made from an earlier read still applies.
	read, err = e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	same := v4pool("p", "10.0.0.0/24", 26)
	same.NodeSelector, same.Disabled = `rack == "r1"`, true
	require.NoError(t, e.allocator().UpdatePool(e.ctx, same))
	after, err = e.store.Get(e.ctx, ipam.KindPool, "default")
	require.NoError(t, err)
	require.Equal(t, before.Revision, after.Revision, "the same spec again is not written")
	read.NamespaceSelector = "all()"
	require.NoError(t, e.a.UpdatePool(e.ctx, read), "the read is still the stored version")
}

// TestPoolUpdatesNotLost: allocators that each read a pool, change it and
// write it back, reading again whenever ErrPoolChanged says they were
// overtaken, lose no change: a counter kept in the pool's nodeSelector
// ends at the number of increments.
func TestPoolUpdatesNotLost(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	const writers, each = 4, 25
	increment := func(a *ipam.Allocator) error {
		for {
			p, err := a.Pool(e.ctx, "p")
			if err != nil {
				return err
			}
			n := 0
			if s, ok := strings.CutPrefix(p.NodeSelector, "count == "); ok {
				if n, err = strconv.Atoi(strings.Trim(s, `"`)); err != nil {
					return err
				}
			}
			p.NodeSelector = fmt.Sprintf("count == %q", strconv.Itoa(n+1))
			switch err := a.UpdatePool(e.ctx, p); {
			case errors.Is(err, ipam.ErrPoolChanged):
				continue
			default:
				return err
			}
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for range writers {
		a := e.allocator()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if err := increment(a); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	p, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("count == %q", strconv.Itoa(writers*each)), p.NodeSelector)
}

// TestCreatePoolIgnoresVersion: CreatePool gives the pool a version of its
// own whatever p.Version says, so a pool copied from another (a Version
// and all) cannot take that pool's version; and a deletion takes a
// version too, so the pool created next has one above every earlier one.
func TestCreatePoolIgnoresVersion(t *testing.T) {
	e := newEnv(t, v4pool("a", "10.0.0.0/24", 26))
	a, err := e.a.Pool(e.ctx, "a")
	require.NoError(t, err)

	b := v4pool("b", "10.1.0.0/24", 26)
	b.Version = a.Version
	require.NoError(t, e.a.CreatePool(e.ctx, b))
	got, err := e.a.Pool(e.ctx, "b")
	require.NoError(t, err)
	require.Greater(t, got.Version, a.Version, "the version given is not taken")

	require.NoError(t, e.a.DeletePool(e.ctx, "b"))
	require.NoError(t, e.a.CreatePool(e.ctx, v4pool("c", "10.2.0.0/24", 26)))
	c, err := e.a.Pool(e.ctx, "c")
	require.NoError(t, err)
	require.Greater(t, c.Version, got.Version+1, "the disable and the removal of b each took a version")
}
