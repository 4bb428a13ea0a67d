package ipam_test

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// legacyPoolRecord is a pool record as carve wrote it before pools had
// versions: neither the record nor its pools carry one.
const legacyPoolRecord = `{"pools":[` +
	`{"name":"p","spec":{"cidr":"10.0.0.0/24","blockSize":26}},` +
	`{"name":"q","spec":{"cidr":"10.1.0.0/24","blockSize":26}}]}`

// TestLegacyPoolRecordVersions: a store written before pools had
// versions (an etcd store carve is upgraded on) gives its pools a version
// too, so that an update made from a read of one is conditional: here, a
// controller's update from a read taken before another process disabled
// the pool must not enable it again. A pool nobody changed keeps the
// version read, and no version is given twice.
func TestLegacyPoolRecordVersions(t *testing.T) {
	e := newEnv(t)
	_, err := e.store.Create(e.ctx, ipam.KindPool, "default", []byte(legacyPoolRecord))
	require.NoError(t, err)

	p, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	require.NotZero(t, p.Version, "a pool read from a record without versions has one")
	q, err := e.a.Pool(e.ctx, "q")
	require.NoError(t, err)
	require.NotZero(t, q.Version)

	require.NoError(t, e.allocator().DisablePool(e.ctx, "p"), "another process disables the pool")
	disabled, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	require.NotEqual(t, p.Version, disabled.Version)

	p.NodeSelector = `rack == "r1"`
	require.ErrorIs(t, e.a.UpdatePool(e.ctx, p), ipam.ErrPoolChanged, "an update from a read before the disable")
	got, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	require.True(t, got.Disabled, "the pool stays disabled")

	again, err := e.a.Pool(e.ctx, "q")
	require.NoError(t, err)
	require.Equal(t, q.Version, again.Version, "q was not changed: its version stands")
	q.NodeSelector = `rack == "r2"`
	require.NoError(t, e.a.UpdatePool(e.ctx, q), "an update of q from its read before p's change")
	q2, err := e.a.Pool(e.ctx, "q")
	require.NoError(t, err)
	require.NotEqual(t, q.Version, q2.Version)
	require.NotEqual(t, disabled.Version, q2.Version)
}

// TestSplitPartsAsStored: SplitPool returns its parts exactly as Pool
// reads them afterwards, Version included.
func TestSplitPartsAsStored(t *testing.T) {
	e := newEnv(t, v4pool("a", "10.0.0.0/24", 26))
	parts, err := e.a.SplitPool(e.ctx, "a", "a", "b")
	require.NoError(t, err)
	for _, part := range parts {
		stored, err := e.a.Pool(e.ctx, part.Name)
		require.NoError(t, err)
		require.Equal(t, stored.String(), part.String())
		require.NotZero(t, part.Version)
	}
}

// TestUpdatesFromOneRead: of allocators that each update a pool from
// the same read, exactly one succeeds; the others fail with ErrPoolChanged.
// The same holds with a DisablePool and a SplitPool in the mix: a conditional
// update from the read that lost to them changes nothing.
func TestUpdatesFromOneRead(t *testing.T) {
	for round := range 20 {
		e := newEnv(t, v4pool("p", "10.0.0.0/24", 26), v4pool("other", "10.1.0.0/24", 26))
		read, err := e.a.Pool(e.ctx, "p")
		require.NoError(t, err)
		const updaters = 4
		var wg sync.WaitGroup
		errs := make([]error, updaters)
		for i := range updaters {
			a := e.allocator()
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := read
				p.NamespaceSelector = `team == "` + string(rune('a'+i)) + `"`
				errs[i] = a.UpdatePool(e.ctx, p)
			}()
		}
		// Writes of another pool conflict with the updates' writes but
		// must not fail them.
		var otherErr, splitErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			otherErr = e.allocator().DisablePool(e.ctx, "other")
		}()
		if round%2 == 1 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, splitErr = e.allocator().SplitPool(e.ctx, "p", "p", "p2")
			}()
		}
		wg.Wait()
		require.NoError(t, otherErr)
		require.NoError(t, splitErr)
		ok := 0
		var won string
		for i, err := range errs {
			if err == nil {
				ok++
				won = `team == "` + string(rune('a'+i)) + `"`
				continue
			}
			require.ErrorIs(t, err, ipam.ErrPoolChanged, "round %d", round)
		}
		stored, err := e.a.Pool(e.ctx, "p")
		require.NoError(t, err)
		if round%2 == 0 {
			require.Equal(t, 1, ok, "round %d: exactly one update from the read succeeds", round)
			require.Equal(t, won, stored.NamespaceSelector)
			continue
		}
		// With the split: at most one update, and only before the split,
		// whose parts then carry it.
		require.LessOrEqual(t, ok, 1, "round %d", round)
		p2, err := e.a.Pool(e.ctx, "p2")
		require.NoError(t, err)
		if ok == 1 {
			require.Equal(t, won, stored.NamespaceSelector)
			require.Equal(t, won, p2.NamespaceSelector)
		} else {
			require.Empty(t, stored.NamespaceSelector)
		}
	}
}

// TestDisableRacingDeletePool: a DisablePool that lands between
// DeletePool's read and its own disable leaves the deletion's disable
// nothing to write; the deletion still completes, and no error of its
// unchanged write leaks.
func TestDisableRacingDeletePool(t *testing.T) {
	for range 20 {
		e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
		e.mustAssign4("node-1", "h1", 1)
		var wg sync.WaitGroup
		var delErr, disErr error
		wg.Add(2)
		go func() { defer wg.Done(); delErr = e.allocator().DeletePool(e.ctx, "p") }()
		go func() { defer wg.Done(); disErr = e.allocator().DisablePool(e.ctx, "p") }()
		wg.Wait()
		require.NoError(t, delErr)
		if disErr != nil {
			require.ErrorIs(t, disErr, ipam.ErrPoolNotFound)
		}
		_, err := e.a.Pool(e.ctx, "p")
		require.ErrorIs(t, err, ipam.ErrPoolNotFound)
	}
}

// TestConditionalUpdateDuringPoolDeletion: TestUpdateDuringPoolDeletion
// with the update made from the read, Version and all, that a controller
// took before DeletePool began: it is refused, so it cannot enable the pool
// again, and the deletion completes.
func TestConditionalUpdateDuringPoolDeletion(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	e.mustAssign4("node-a", "h-a", 1)
	read, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	var once sync.Once
	var updateErr error
	rs := &readHookStore{hookStore{Store: e.store}}
	rs.hook = func(op string, kind ipam.Kind, key string) {
		if op == "listed" && kind == ipam.KindBlock {
			once.Do(func() { updateErr = e.a.UpdatePool(e.ctx, read) })
		}
	}
	deleter, err := ipam.New(rs, ipam.Options{})
	require.NoError(t, err)
	require.NoError(t, deleter.DeletePool(e.ctx, "p"))
	require.ErrorIs(t, updateErr, ipam.ErrPoolChanged)
	_, err = e.a.Pool(e.ctx, "p")
	require.ErrorIs(t, err, ipam.ErrPoolNotFound)
	requireNoAffineBlocks(t, e)
}
