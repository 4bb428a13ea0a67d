package ipam_test

import (
	"context"
	"encoding/json"
	"math"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// TestBorrowRefusesBlockRecordUnderAnotherKey: a block record stored under
// the key of one block but holding (an old copy of) another block, at the
// same revision as that block's own record, as a store whose revisions
// count per key allows. A borrowing node takes the copy for the real
// block and writes it back over the real one: the real block loses its
// addresses, and one of them is handed out a second time.
func TestBorrowRefusesBlockRecordUnderAnotherKey(t *testing.T) {
	ctx := context.Background()
	s := newPerKeyStore()
	a, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	require.NoError(t, a.CreatePool(ctx, v4pool("p", "10.0.0.0/24", 26)))
	cfg := ipam.DefaultConfig()
	cfg.MaxBlocksPerHost = 1
	require.NoError(t, a.SetConfig(ctx, cfg))

	// node-a's block, with one address, then full.
	first, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "a0", Node: "node-a"})
	require.NoError(t, err)
	blkA := first.IPv4[0].Block
	old, err := s.Get(ctx, ipam.KindBlock, blockKeyOf(blkA))
	require.NoError(t, err)
	held := map[netip.Addr]bool{first.IPv4[0].Addr: true}
	rest, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 63, Handle: "a1", Node: "node-a"})
	require.NoError(t, err)
	for _, x := range rest.IPv4 {
		require.Equal(t, blkA, x.Block)
		held[x.Addr] = true
	}
	// node-b's block, full: node-b is at MaxBlocksPerHost and must borrow.
	b, err := ipam.New(s, ipam.Options{}) // another process
	require.NoError(t, err)
	full, err := b.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 64, Handle: "b0", Node: "node-b"})
	require.NoError(t, err)
	blkB := full.IPv4[0].Block

	// The corrupt record: node-a's block as it was, under the key of a
	// block of the pool nobody holds, at the revision node-a's block has.
	cur, err := s.Get(ctx, ipam.KindBlock, blockKeyOf(blkA))
	require.NoError(t, err)
	var spare netip.Prefix
	for _, c := range []string{"10.0.0.0/26", "10.0.0.64/26", "10.0.0.128/26", "10.0.0.192/26"} {
		if p := netip.MustParsePrefix(c); p != blkA && p != blkB {
			spare = p
			break
		}
	}
	for putRaw(t, s, ipam.KindBlock, blockKeyOf(spare), old.Value) < cur.Revision {
	}
	rec, err := s.Get(ctx, ipam.KindBlock, blockKeyOf(spare))
	require.NoError(t, err)
	require.Equal(t, cur.Revision, rec.Revision)

	c, err := ipam.New(s, ipam.Options{}) // a third process, nothing cached
	require.NoError(t, err)
	res, err := c.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "b1", Node: "node-b"})
	if err == nil {
		require.False(t, held[res.IPv4[0].Addr], "%s handed to node-b while node-a holds it", res.IPv4[0].Addr)
	}
	// node-a's addresses are all still assigned.
	for _, h := range []string{"a0", "a1"} {
		got, err := a.IPsByHandle(ctx, h)
		require.NoError(t, err)
		for _, x := range got {
			delete(held, x)
		}
	}
	require.Empty(t, held, "node-a's addresses lost from its block")
}

// TestCorruptReservationIsNotCallersInvalidArgument: a reservation
// record that decodes but says what no reservation may (no CIDRs, a
// prefix that is not masked) stops AutoAssign with an error matching
// ErrCorrupt that names it, as it should, but the error matches
// ErrInvalid too, which says the caller's argument is malformed: the
// caller's request was fine. (Node label records take care that their
// checks' errors do not match ErrInvalid; unmarshalPools likewise.)
func TestCorruptReservationIsNotCallersInvalidArgument(t *testing.T) {
	for name, value := range map[string]string{
		"no CIDRs":  `{"reservedCIDRs":[]}`,
		"unmasked":  `{"reservedCIDRs":["10.0.0.1/24"]}`,
		"4in6 CIDR": `{"reservedCIDRs":["::ffff:10.0.0.0/120"]}`,
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
			putRaw(t, e.store, ipam.KindReservation, "r1", []byte(value))
			_, err := e.assign4("node-1", "h", 1)
			require.ErrorIs(t, err, ipam.ErrCorrupt)
			require.ErrorContains(t, err, `"r1"`)
			require.NotErrorIs(t, err, ipam.ErrInvalid, "a corrupt stored record is not the caller's invalid argument: %v", err)
			_, err = e.a.Reservations(e.ctx)
			require.ErrorIs(t, err, ipam.ErrCorrupt)
			require.NotErrorIs(t, err, ipam.ErrInvalid, "%v", err)
		})
	}
}

// repairConverges fails unless Repair, on a quiet store, fixed every
// problem it called repairable, and every problem the check after it
// reports is one it said it could not fix.
func repairConverges(t *testing.T, acts []ipam.RepairAction, after *ipam.Report) {
	t.Helper()
	fixed := map[string]bool{}
	for _, act := range acts {
		require.True(t, act.Done || !act.Problem.Repairable, "a repairable problem on a quiet store left unrepaired: %v: %s", act.Problem, act.Note)
		if act.Done {
			fixed[string(act.Problem.Kind)+" "+act.Problem.Record] = true
		}
	}
	known := map[string]bool{}
	for _, act := range acts {
		known[string(act.Problem.Kind)+" "+act.Problem.Record] = true
	}
	for _, p := range after.Problems {
		k := string(p.Kind) + " " + p.Record
		require.False(t, fixed[k], "Repair said it fixed %q, and the check after it finds it again: %v", k, p)
		require.True(t, known[k], "the check after Repair finds a problem Repair did not report: %v (actions %v)", p, acts)
	}
}

// TestBlockNamesThatCannotBeKeysAreCorrupt: a block record that decodes but
// names an owner handle or an affinity that carve never writes (an empty
// handle, one with a control character, a node name with "/" or a
// control character). Check takes the block's word for them: it reports
// the handle's record missing, or the block missing from its owner's
// index, as repairable, and Repair and a plain ReleaseIPs then pass the
// store keys that the Store contract says carve never passes (the empty
// key, keys with control characters), or write an index record that the
// next check finds corrupt, so that Repair never converges.
func TestBlockNamesThatCannotBeKeysAreCorrupt(t *testing.T) {
	ctx := context.Background()
	for name, c := range map[string]struct {
		aff    block.Affinity
		handle string
	}{
		"empty handle":            {block.Host("node-4"), ""},
		"handle with control":     {block.Host("node-4"), "pod\x01"},
		"node name with slash":    {block.Host("rack/node-4"), "pod-4"},
		"node name with control":  {block.Host("node\x7f4"), "pod-4"},
		"empty node name":         {block.Host(""), "pod-4"},
		"virtual name with slash": {block.Virtual("a/b"), "svc-4"},
	} {
		t.Run(name, func(t *testing.T) {
			ms := memstore.New()
			s := new(keyChecker)
			a, err := ipam.New(s.store(ms), ipam.Options{})
			require.NoError(t, err)
			require.NoError(t, a.CreatePool(ctx, v4pool("p", "10.0.0.0/24", 26)))
			blk := netip.MustParsePrefix("10.0.0.64/26")
			b, err := block.New(blk)
			require.NoError(t, err)
			b.SetAffinity(c.aff, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			addr := netip.MustParseAddr("10.0.0.70")
			_, err = b.Assign(addr, block.Owner{Handle: c.handle})
			require.NoError(t, err)
			value, err := b.MarshalBinary()
			require.NoError(t, err)
			putRaw(t, ms, ipam.KindBlock, blockKeyOf(blk), value)

			r, err := a.Check(ctx)
			require.NoError(t, err)
			require.False(t, r.Clean(), "a block carve could never have written")
			acts, after, err := a.Repair(ctx, ipam.RepairOptions{})
			require.NoError(t, err)
			require.Empty(t, s.badKeys(), "Check and Repair pass the store keys carve never passes")
			repairConverges(t, acts, after)

			_, err = a.ReleaseIPs(ctx, ipam.Release{Addr: addr})
			if err != nil {
				require.ErrorIs(t, err, ipam.ErrCorrupt)
			}
			require.Empty(t, s.badKeys(), "ReleaseIPs passes the store keys carve never passes")
		})
	}
}

// TestCheckOnUnreadableBlock: a node's block record no longer
// decodes. Check reports it (not repairable), and also reports its index
// entry ("block does not exist") and the handle's count in it ("which
// gives it 0") as repairable problems: the block does exist, and Repair,
// rightly, cannot fix either while the block is unreadable, so the report
// calls repairable what Repair leaves.
func TestCheckOnUnreadableBlock(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	got := e.mustAssign4("node-1", "h", 3)
	blk := got[0].Block
	putRaw(t, e.store, ipam.KindBlock, blockKeyOf(blk), []byte("junk"))
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	for _, p := range r.Problems {
		require.NotContains(t, p.Detail, "does not exist", "%v", p)
	}
	acts, after, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	repairConverges(t, acts, after)
	require.False(t, after.Repairable())
}

// TestPoolRecordAtLastVersionIsCorrupt: the pool record's version is the last
// version it gave a pool, and each write takes the next, so that a pool's
// Version never repeats and UpdatePool from an old read is refused. A
// record whose version is the largest uint64 (a disk error, another
// program) makes the next write's version wrap to 0: the pool it changes
// is stored without a version, which reads as 1 again, and an update made
// from a read taken before, at version 1, undoes the change.
func TestPoolRecordAtLastVersionIsCorrupt(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	old, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	require.Equal(t, uint64(1), old.Version)

	rec, err := e.store.Get(e.ctx, ipam.KindPool, "default")
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(rec.Value, &m))
	m["version"] = uint64(math.MaxUint64)
	value, err := json.Marshal(m)
	require.NoError(t, err)
	putRaw(t, e.store, ipam.KindPool, "default", value)

	err = e.a.DisablePool(e.ctx, "p")
	if err != nil {
		require.ErrorIs(t, err, ipam.ErrCorrupt)
		return
	}
	now, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	require.True(t, now.Disabled)
	require.NotEqual(t, old.Version, now.Version, "the disabled pool has the version of a read taken before")
	old.NATOutgoing = !old.NATOutgoing
	err = e.a.UpdatePool(e.ctx, old)
	require.ErrorIs(t, err, ipam.ErrPoolChanged, "an update from a read taken before the pool was disabled")
}

// TestSetConfigReplacesCorruptConfig: Check reports a config record
// that does not decode as not repairable, and every assignment fails with
// ErrCorrupt until it is replaced; SetConfig, which writes the whole
// configuration, is the way to replace it (as SetNodeLabels replaces a
// node record that does not decode), but it reads the old record first
// and fails on it, so no call of the API can fix the store.
func TestSetConfigReplacesCorruptConfig(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	putRaw(t, e.store, ipam.KindConfig, "default", []byte(`{"strictAffinity":`))
	_, err := e.assign4("node-1", "h", 1)
	require.ErrorIs(t, err, ipam.ErrCorrupt)
	require.NoError(t, e.a.SetConfig(e.ctx, ipam.DefaultConfig()), "replacing a corrupt configuration")
	e.mustAssign4("node-1", "h", 1)
	e.requireConsistent()
}

// TestCheckReportsKeysCarveNeverWrites: ProblemCorrupt covers a
// record with "a key carve never writes". Check finds such keys among
// blocks, the affinity index, reservations and node labels, but not
// among pools and configuration (carve writes only "default"; it reads
// only that key, so a pool set written under another key by another
// program is silently ignored) nor among handles (a handle ID carve never
// accepts, such as one with a leading space).
func TestCheckReportsKeysCarveNeverWrites(t *testing.T) {
	for _, c := range []struct {
		kind  ipam.Kind
		key   string
		value []byte
	}{
		{ipam.KindPool, "pools", []byte(`{"version":1,"pools":[]}`)},
		{ipam.KindConfig, "Default", []byte(`{"strictAffinity":true}`)},
		{ipam.KindHandle, " pod-1", ipam.EncodeHandle(map[netip.Prefix]int{netip.MustParsePrefix("10.0.0.0/26"): 1})},
	} {
		t.Run(c.kind.String(), func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
			putRaw(t, e.store, c.kind, c.key, c.value)
			r, err := e.a.Check(e.ctx)
			require.NoError(t, err)
			want := c.kind.String() + " " + c.key
			found := false
			for _, p := range r.Problems {
				found = found || p.Kind == ipam.ProblemCorrupt && p.Record == want
			}
			require.True(t, found, "no corrupt-record problem for %q: %v", want, r.Problems)
			acts, after, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
			require.NoError(t, err)
			repairConverges(t, acts, after)
		})
	}
}

// TestProblemRecordIsKindAndKey: Problem.Record "names the store
// record concerned: "<kind> <key>"", so that a program reading the
// report can find the record. For a block that does not decode it does
// ("block v4:0a000040/26"), but every other block problem names the block
// by its prefix ("block 10.0.0.64/26"), which is no key.
func TestProblemRecordIsKindAndKey(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	got := e.mustAssign4("node-1", "h", 1)
	spare := netip.MustParsePrefix("10.0.0.64/26")
	if got[0].Block == spare {
		spare = netip.MustParsePrefix("10.0.0.128/26")
	}
	e.leftoverBlock(spare.String(), blockKeyOf(spare)) // empty, without affinity
	// Drop the node's index entry: its block is affine but unindexed.
	require.NoError(t, e.store.Delete(e.ctx, ipam.KindAffinity, "host:node-1/"+blockKeyOf(got[0].Block), mustRev(t, e.store, ipam.KindAffinity, "host:node-1/"+blockKeyOf(got[0].Block))))
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Len(t, r.Problems, 2, "%v", r.Problems)
	for _, p := range r.Problems {
		kind, key, ok := strings.Cut(p.Record, " ")
		require.True(t, ok, "%v", p)
		var k ipam.Kind
		require.NoError(t, k.UnmarshalText([]byte(kind)))
		_, err := e.store.Get(e.ctx, k, key)
		require.NoError(t, err, "problem %v: Record %q names no record", p, p.Record)
	}
}

func mustRev(t *testing.T, s ipam.Store, kind ipam.Kind, key string) ipam.Revision {
	t.Helper()
	rec, err := s.Get(context.Background(), kind, key)
	require.NoError(t, err)
	return rec.Revision
}

// TestBlockCounterAtTopIsCorrupt: a block's counter starts at its creation
// time in nanoseconds and goes up by one per change, so no real block
// comes near 2^64. A block record whose counter is at the top (a disk
// error, another program) decodes, and the next assignment's sequence
// number wraps to 0, which a Release takes as "no sequence number to
// check": the owner's release, sent late, after the address went to
// someone else, frees the new owner's address.
func TestBlockCounterAtTopIsCorrupt(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	blk := netip.MustParsePrefix("10.0.0.0/26")
	b, err := block.NewWithSeq(blk, math.MaxUint64-1)
	require.NoError(t, err)
	b.SetAffinity(block.Host("node-1"), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	value, err := b.MarshalBinary()
	require.NoError(t, err)
	putRaw(t, e.store, ipam.KindBlock, blockKeyOf(blk), value)
	putRaw(t, e.store, ipam.KindAffinity, "host:node-1/"+blockKeyOf(blk), nil)

	addr := netip.MustParseAddr("10.0.0.5")
	first, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: addr, Handle: "pod-a", Node: "node-1"})
	if err != nil {
		require.ErrorIs(t, err, ipam.ErrCorrupt)
		return
	}
	_, err = e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: addr, Seq: first.Seq})
	require.NoError(t, err)
	second, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: addr, Handle: "pod-b", Node: "node-1"})
	require.NoError(t, err)
	// pod-a's release again, late (a retried CNI DEL).
	res, _ := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: addr, Seq: first.Seq})
	require.Empty(t, res.Released, "a late release with the first assignment's Seq (%d) freed the second's (%d)", first.Seq, second.Seq)
}

// corruptWalkStart returns a store where the block node-1's claim walk
// starts at, first, holds a record that does not decode, and node-1
// holds no block.
func corruptWalkStart(t *testing.T) (*env, netip.Prefix) {
	t.Helper()
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	first := e.mustAssign4("node-1", "h", 1)[0].Block
	_, err := e.a.ReleaseHostAffinities(e.ctx, "node-1", false)
	require.NoError(t, err)
	_, err = e.a.ReleaseByHandle(e.ctx, "h")
	require.NoError(t, err)
	e.requireConsistent()
	putRaw(t, e.store, ipam.KindBlock, blockKeyOf(first), []byte("junk"))
	return e, first
}

// TestClaimPassesOverCorruptBlock: a node's claim walk comes to a block
// record that does not decode. The block was never the node's: the claim
// passes over it, as over a block another node holds, and the request
// gets the next block of its walk. The claim leaves no index entry for
// the corrupt block (it makes one first; Check would then find an entry
// that no Repair can remove while the block is corrupt), and the record
// stays as it was, for Check to report.
func TestClaimPassesOverCorruptBlock(t *testing.T) {
	e, first := corruptWalkStart(t)

	a := e.allocator() // nothing cached
	res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h2", Node: "node-1"})
	require.NoError(t, err)
	require.Len(t, res.IPv4, 1)
	require.NotEqual(t, first, res.IPv4[0].Block)
	idx, err := e.store.List(e.ctx, ipam.KindAffinity, ipam.KeyRange{})
	require.NoError(t, err)
	require.Len(t, idx, 1, "the node's new block only: %v", idx)
	require.NotContains(t, idx[0].Key, blockKeyOf(first))
	rec, err := e.store.Get(e.ctx, ipam.KindBlock, blockKeyOf(first))
	require.NoError(t, err)
	require.Equal(t, []byte("junk"), rec.Value)
	r, err := a.Check(e.ctx)
	require.NoError(t, err)
	require.Contains(t, kinds(r), ipam.ProblemCorrupt)
}

// TestClaimsBehindCorruptBlocks: corrupt records over three of a pool's
// four blocks. Each new node's claim passes over them to the free
// block while there is one; once it is full, a request falls short with
// reasons that name the corrupt blocks, so that a pool that looks three
// quarters empty is not taken for a plain lack of room.
func TestClaimsBehindCorruptBlocks(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	bad := []string{"10.0.0.0/26", "10.0.0.64/26", "10.0.0.128/26"}
	for _, blk := range bad {
		putRaw(t, e.store, ipam.KindBlock, blockKeyOf(mustPrefix(blk)), []byte("junk"))
	}
	got := e.mustAssign4("node-1", "a", 64) // the free block, whole: nothing to borrow
	require.Equal(t, mustPrefix("10.0.0.192/26"), got[0].Block)

	_, err := e.assign4("node-2", "b", 1)
	require.Error(t, err)
	require.NotErrorIs(t, err, ipam.ErrCorrupt, "the request failed for want of room, not on a block of its own")
	require.ErrorContains(t, err, "corrupt")
	for _, blk := range bad {
		require.ErrorContains(t, err, blk)
	}
	// A failed request leaves nothing behind: node-1's block is the only
	// one indexed.
	idx, err := e.store.List(e.ctx, ipam.KindAffinity, ipam.KeyRange{})
	require.NoError(t, err)
	require.Len(t, idx, 1, "%v", idx)
	require.Contains(t, idx[0].Key, "node-1")
}

// TestCheckWithCorruptPoolRecord: when the pool record does not
// decode, Check reports it, and then judges every block against no pools
// at all: each is "outside pools" ("no pool carves it"), an empty one
// repairable, which Repair cannot do (it reads the pools, and fails), and
// which it must not do (the block is a node's, in a pool that exists).
func TestCheckWithCorruptPoolRecord(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	_, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	require.NoError(t, err)
	e.mustAssign4("node-2", "h", 1)
	putRaw(t, e.store, ipam.KindPool, "default", []byte(`{"pools":[`))
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	for _, p := range r.Problems {
		require.NotEqual(t, ipam.ProblemBlockOutsidePools, p.Kind, "the pools are unknown, not absent: %v", p)
	}
	acts, after, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	repairConverges(t, acts, after)
}

// TestHugeHandleRecordMemory: ReleaseByHandle makes room for the
// addresses it may release up front, from the counts the handle record
// gives (each capped at a block's size). A handle record of a few
// thousand entries, each counting a full block's worth (another program's
// write, or a hostile one: the blocks need not exist), makes it allocate
// about 24 bytes × 4096 per entry: a 16 KB record costs some 200 MB, and
// a record of a megabyte, which etcd stores, tens of gigabytes.
func TestHugeHandleRecordMemory(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	counts := map[netip.Prefix]int{}
	for i := range 2000 {
		counts[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), 32)] = block.MaxSize
	}
	value := ipam.EncodeHandle(counts)
	putRaw(t, e.store, ipam.KindHandle, "h", value)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := e.a.ReleaseByHandle(e.ctx, "h")
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, ipam.ErrHandleNotFound)
	alloc := after.TotalAlloc - before.TotalAlloc
	require.Less(t, alloc, uint64(1000*len(value)), "ReleaseByHandle of a %d-byte handle record allocated %d MB", len(value), alloc>>20)
}
