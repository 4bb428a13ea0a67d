// Package storetest is the conformance suite for [ipam.Store] backends.
//
// A backend proves itself in three lines:
//
//	func TestConformance(t *testing.T) {
//		storetest.RunConformanceTests(t, func(t *testing.T) ipam.Store { return newMyStore(t) })
//	}
//
// Each check runs as its own subtest on a fresh store from newStore, checks
// errors only with errors.Is, and includes concurrent writers, so run it
// under the race detector. Optional capabilities ([ipam.Generations],
// [ipam.BlockKeeper], [ipam.Committer]) are checked when the store
// implements them, and their checks pass with a log line when it does
// not. So a store that means to offer one should say so where the compiler
// checks it, as in
//
//	var _ ipam.Committer = (*Store)(nil)
//
// since a method with the wrong signature only makes the suite pass over
// the capability. The checks of concurrent commits catch a store whose
// commits can overlap in most runs, not in every one: run them a few
// times (go test -count=10 -run 'Conformance/RaceCommit'). So it is with
// a generation that moves before its write is visible (RaceGenerations),
// a List that misses a record a Get has returned (RaceListAfterGet), and
// a kept block encoded after the write that replaced it has returned
// (RaceBlockKeeper, which the race detector catches every time).
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carve-ipam/carve/ipam"
)

// RunConformanceTests runs every check of the Store contract against stores
// made by newStore, which is called once per subtest and should register any
// cleanup with t.Cleanup.
func RunConformanceTests(t *testing.T, newStore func(t *testing.T) ipam.Store) {
	t.Helper()
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t)
			if c.applies != nil && !c.applies(s) {
				// An optional capability the backend does not offer: there is
				// nothing to check, and that is not a failure.
				t.Logf("%s: the store does not offer this optional capability", c.name)
				return
			}
			c.run(t, s)
		})
	}
}

type check struct {
	name    string
	run     func(t *testing.T, s ipam.Store)
	applies func(s ipam.Store) bool // nil: always
}

func hasGenerations(s ipam.Store) bool {
	_, ok := s.(ipam.Generations)
	return ok
}

var checks = []check{
	{name: "GetMissing", run: testGetMissing},
	{name: "CreateThenGet", run: testCreateThenGet},
	{name: "CreateExisting", run: testCreateExisting},
	{name: "UpdateCurrent", run: testUpdateCurrent},
	{name: "UpdateStale", run: testUpdateStale},
	{name: "UpdateMissing", run: testUpdateMissing},
	{name: "DeleteCurrent", run: testDeleteCurrent},
	{name: "DeleteStale", run: testDeleteStale},
	{name: "DeleteMissing", run: testDeleteMissing},
	{name: "RevisionsNeverRepeat", run: testRevisionsNeverRepeat},
	{name: "KindsAreSeparate", run: testKindsAreSeparate},
	{name: "ListOrderAndRanges", run: testListOrderAndRanges},
	{name: "ListEmpty", run: testListEmpty},
	{name: "ListSeesWrites", run: testListSeesWrites},
	{name: "Values", run: testValues},
	{name: "ValuesStay", run: testValuesStay},
	{name: "Keys", run: testKeys},
	{name: "CancelledContext", run: testCancelledContext},
	{name: "RaceUpdate", run: testRaceUpdate},
	{name: "RaceCreate", run: testRaceCreate},
	{name: "RaceDelete", run: testRaceDelete},
	{name: "RaceCounter", run: testRaceCounter},
	{name: "RaceCreateDelete", run: testRaceCreateDelete},
	{name: "RaceListAfterGet", run: testRaceListAfterGet},
	{name: "Generations", run: testGenerations, applies: hasGenerations},
	{name: "RaceGenerations", run: testRaceGenerations, applies: hasGenerations},
	{name: "BlockKeeper", run: testBlockKeeper, applies: hasBlockKeeper},
	{name: "RaceBlockKeeper", run: testRaceBlockKeeper, applies: hasBlockKeeper},
	{name: "CommitApplies", run: testCommitApplies, applies: hasCommitter},
	{name: "CommitRefused", run: testCommitRefused, applies: hasCommitter},
	{name: "CommitRevisionsNeverRepeat", run: testCommitRevisionsNeverRepeat, applies: hasCommitter},
	{name: "CommitCancelledContext", run: testCommitCancelledContext, applies: hasCommitter},
	{name: "RaceCommit", run: testRaceCommit, applies: hasCommitter},
	{name: "RaceCommitReaders", run: testRaceCommitReaders, applies: hasCommitter},
	{name: "CommitGenerations", run: testCommitGenerations, applies: hasCommitterAndGenerations},
	{name: "CommitBlockKeeper", run: testCommitBlockKeeper, applies: hasCommitterAndBlockKeeper},
}

// ctx returns a context for one check.
func ctx(t *testing.T) context.Context { return t.Context() }

func mustCreate(t *testing.T, s ipam.Store, kind ipam.Kind, key string, value []byte) ipam.Revision {
	t.Helper()
	rev, err := s.Create(ctx(t), kind, key, value)
	if err != nil {
		t.Fatalf("Create(%s, %q): %v", kind, key, err)
	}
	if rev == 0 {
		t.Fatalf("Create(%s, %q) returned revision 0; revisions of records are non-zero", kind, key)
	}
	return rev
}

func mustGet(t *testing.T, s ipam.Store, kind ipam.Kind, key string) ipam.Record {
	t.Helper()
	rec, err := s.Get(ctx(t), kind, key)
	if err != nil {
		t.Fatalf("Get(%s, %q): %v", kind, key, err)
	}
	if rec.Key != key {
		t.Fatalf("Get(%s, %q) returned key %q", kind, key, rec.Key)
	}
	return rec
}

// wantRecord checks that the record under key has the value and revision.
func wantRecord(t *testing.T, s ipam.Store, kind ipam.Kind, key string, value []byte, rev ipam.Revision) {
	t.Helper()
	rec := mustGet(t, s, kind, key)
	if !bytes.Equal(rec.Value, value) {
		t.Fatalf("Get(%s, %q) value = %q, want %q", kind, key, clip(rec.Value), clip(value))
	}
	if rec.Revision != rev {
		t.Fatalf("Get(%s, %q) revision = %d, want %d", kind, key, rec.Revision, rev)
	}
}

func wantMissing(t *testing.T, s ipam.Store, kind ipam.Kind, key string) {
	t.Helper()
	if rec, err := s.Get(ctx(t), kind, key); !errors.Is(err, ipam.ErrNotFound) {
		t.Fatalf("Get(%s, %q) = %v, %v; want ErrNotFound", kind, key, rec, err)
	}
}

func wantErr(t *testing.T, op string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want one matching %v", op, err, target)
	}
}

func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

func testGetMissing(t *testing.T, s ipam.Store) {
	for _, k := range ipam.Kinds {
		wantMissing(t, s, k, "absent")
	}
}

func testCreateThenGet(t *testing.T, s ipam.Store) {
	for _, k := range ipam.Kinds {
		v := []byte("value of " + k.String())
		rev := mustCreate(t, s, k, "k1", v)
		wantRecord(t, s, k, "k1", v, rev)
	}
}

func testCreateExisting(t *testing.T, s ipam.Store) {
	rev := mustCreate(t, s, ipam.KindBlock, "b", []byte("first"))
	_, err := s.Create(ctx(t), ipam.KindBlock, "b", []byte("second"))
	wantErr(t, "Create over an existing record", err, ipam.ErrExists)
	wantRecord(t, s, ipam.KindBlock, "b", []byte("first"), rev)
}

func testUpdateCurrent(t *testing.T, s ipam.Store) {
	rev := mustCreate(t, s, ipam.KindHandle, "h", []byte("v1"))
	rev2, err := s.Update(ctx(t), ipam.KindHandle, "h", []byte("v2"), rev)
	if err != nil {
		t.Fatalf("Update at the current revision: %v", err)
	}
	if rev2 == 0 || rev2 == rev {
		t.Fatalf("Update returned revision %d after %d; want a new non-zero revision", rev2, rev)
	}
	wantRecord(t, s, ipam.KindHandle, "h", []byte("v2"), rev2)

	rev3, err := s.Update(ctx(t), ipam.KindHandle, "h", []byte("v3"), rev2)
	if err != nil {
		t.Fatalf("second Update: %v", err)
	}
	if rev3 == rev || rev3 == rev2 || rev3 == 0 {
		t.Fatalf("revisions %d, %d, %d are not all new", rev, rev2, rev3)
	}
	wantRecord(t, s, ipam.KindHandle, "h", []byte("v3"), rev3)

	// An update that changes no byte is a write all the same: a new
	// revision, and the one before it is stale.
	rev4, err := s.Update(ctx(t), ipam.KindHandle, "h", []byte("v3"), rev3)
	if err != nil {
		t.Fatalf("Update to the same value: %v", err)
	}
	if rev4 == 0 || rev4 == rev3 || rev4 == rev2 || rev4 == rev {
		t.Fatalf("Update to the same value returned revision %d after %d, %d, %d; want a new one", rev4, rev, rev2, rev3)
	}
	_, err = s.Update(ctx(t), ipam.KindHandle, "h", []byte("v3"), rev3)
	wantErr(t, "Update to the same value at the revision before an update to the same value", err, ipam.ErrConflict)
	wantRecord(t, s, ipam.KindHandle, "h", []byte("v3"), rev4)
}

func testUpdateStale(t *testing.T, s ipam.Store) {
	rev := mustCreate(t, s, ipam.KindBlock, "b", []byte("v1"))
	rev2, err := s.Update(ctx(t), ipam.KindBlock, "b", []byte("v2"), rev)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Update(ctx(t), ipam.KindBlock, "b", []byte("stale"), rev)
	wantErr(t, "Update at a stale revision", err, ipam.ErrConflict)
	_, err = s.Update(ctx(t), ipam.KindBlock, "b", []byte("made up"), rev2+12345)
	wantErr(t, "Update at a revision the record never had", err, ipam.ErrConflict)
	// Revision 0 is no record's: it is not "any revision".
	_, err = s.Update(ctx(t), ipam.KindBlock, "b", []byte("at zero"), 0)
	wantErr(t, "Update at revision 0", err, ipam.ErrConflict)
	wantRecord(t, s, ipam.KindBlock, "b", []byte("v2"), rev2)
}

func testUpdateMissing(t *testing.T, s ipam.Store) {
	_, err := s.Update(ctx(t), ipam.KindBlock, "nothing", []byte("v"), 1)
	wantErr(t, "Update of a missing record", err, ipam.ErrNotFound)
	wantMissing(t, s, ipam.KindBlock, "nothing")

	// A deleted record is missing, at the revision it had too.
	rev := mustCreate(t, s, ipam.KindBlock, "deleted", []byte("v"))
	if err := s.Delete(ctx(t), ipam.KindBlock, "deleted", rev); err != nil {
		t.Fatal(err)
	}
	_, err = s.Update(ctx(t), ipam.KindBlock, "deleted", []byte("back"), rev)
	wantErr(t, "Update of a deleted record at the revision it had", err, ipam.ErrNotFound)
	wantMissing(t, s, ipam.KindBlock, "deleted")
}

func testDeleteCurrent(t *testing.T, s ipam.Store) {
	rev := mustCreate(t, s, ipam.KindAffinity, "a", []byte("v"))
	if err := s.Delete(ctx(t), ipam.KindAffinity, "a", rev); err != nil {
		t.Fatalf("Delete at the current revision: %v", err)
	}
	wantMissing(t, s, ipam.KindAffinity, "a")
	err := s.Delete(ctx(t), ipam.KindAffinity, "a", rev)
	wantErr(t, "second Delete", err, ipam.ErrNotFound)
}

func testDeleteStale(t *testing.T, s ipam.Store) {
	rev := mustCreate(t, s, ipam.KindPool, "p", []byte("v1"))
	rev2, err := s.Update(ctx(t), ipam.KindPool, "p", []byte("v2"), rev)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Delete(ctx(t), ipam.KindPool, "p", rev)
	wantErr(t, "Delete at a stale revision", err, ipam.ErrConflict)
	err = s.Delete(ctx(t), ipam.KindPool, "p", 0)
	wantErr(t, "Delete at revision 0", err, ipam.ErrConflict)
	wantRecord(t, s, ipam.KindPool, "p", []byte("v2"), rev2)
}

func testDeleteMissing(t *testing.T, s ipam.Store) {
	err := s.Delete(ctx(t), ipam.KindConfig, "default", 1)
	wantErr(t, "Delete of a missing record", err, ipam.ErrNotFound)
}

// testRevisionsNeverRepeat checks the ABA rule: a record deleted and created
// again never gets a revision it, or anything else under its key, had.
func testRevisionsNeverRepeat(t *testing.T, s ipam.Store) {
	seen := map[ipam.Revision]bool{}
	note := func(r ipam.Revision) {
		t.Helper()
		if seen[r] {
			t.Fatalf("revision %d handed out twice for one key", r)
		}
		seen[r] = true
	}
	var old []ipam.Revision
	for i := range 20 {
		rev := mustCreate(t, s, ipam.KindBlock, "b", fmt.Appendf(nil, "gen %d", i))
		note(rev)
		rev2, err := s.Update(ctx(t), ipam.KindBlock, "b", fmt.Appendf(nil, "gen %d updated", i), rev)
		if err != nil {
			t.Fatal(err)
		}
		note(rev2)
		for _, o := range old {
			_, err := s.Update(ctx(t), ipam.KindBlock, "b", []byte("from the past"), o)
			wantErr(t, fmt.Sprintf("Update with revision %d of an earlier incarnation", o), err, ipam.ErrConflict)
		}
		old = append(old, rev, rev2)
		if err := s.Delete(ctx(t), ipam.KindBlock, "b", rev2); err != nil {
			t.Fatal(err)
		}
	}
}

func testKindsAreSeparate(t *testing.T, s ipam.Store) {
	revs := map[ipam.Kind]ipam.Revision{}
	for _, k := range ipam.Kinds {
		revs[k] = mustCreate(t, s, k, "shared", []byte(k.String()))
	}
	// Deleting the key in one kind leaves the others.
	if err := s.Delete(ctx(t), ipam.KindBlock, "shared", revs[ipam.KindBlock]); err != nil {
		t.Fatal(err)
	}
	for _, k := range ipam.Kinds {
		if k == ipam.KindBlock {
			wantMissing(t, s, k, "shared")
			continue
		}
		wantRecord(t, s, k, "shared", []byte(k.String()), revs[k])
		recs, err := s.List(ctx(t), k, ipam.KeyRange{})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 1 || string(recs[0].Value) != k.String() {
			t.Fatalf("List(%s) = %v, want only the %s record", k, recs, k)
		}
	}
}

func listKeys(t *testing.T, s ipam.Store, kind ipam.Kind, r ipam.KeyRange) []string {
	t.Helper()
	recs, err := s.List(ctx(t), kind, r)
	if err != nil {
		t.Fatalf("List(%s, %+v): %v", kind, r, err)
	}
	keys := make([]string, 0, len(recs))
	for _, rec := range recs {
		keys = append(keys, rec.Key)
	}
	return keys
}

func testListOrderAndRanges(t *testing.T, s ipam.Store) {
	keys := []string{"node-a/v4:0a000000/26", "node-a/v4:0a000040/26", "node-b/v4:0a000080/26",
		"node-ab/x", "node-", "a", "z", "node-a/", "node-b", "m"}
	shuffled := slices.Clone(keys)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for _, k := range shuffled {
		mustCreate(t, s, ipam.KindAffinity, k, []byte(k))
	}
	sorted := slices.Sorted(slices.Values(keys))

	tests := []struct {
		r    ipam.KeyRange
		want []string
	}{
		{ipam.KeyRange{}, sorted},
		{ipam.PrefixRange("node-a/"), []string{"node-a/", "node-a/v4:0a000000/26", "node-a/v4:0a000040/26"}},
		{ipam.PrefixRange("node-b"), []string{"node-b", "node-b/v4:0a000080/26"}},
		{ipam.KeyRange{Start: "m"}, []string{"m", "node-", "node-a/", "node-a/v4:0a000000/26", "node-a/v4:0a000040/26", "node-ab/x", "node-b", "node-b/v4:0a000080/26", "z"}},
		{ipam.KeyRange{Start: "b", End: "node-a/v4:0a000040/26"}, []string{"m", "node-", "node-a/", "node-a/v4:0a000000/26"}},
		{ipam.KeyRange{End: "b"}, []string{"a"}},
		{ipam.KeyRange{Start: "zz"}, nil},
		{ipam.KeyRange{Start: "n", End: "m"}, nil}, // End before Start: nothing
		{ipam.PrefixRange("q"), nil},
	}
	for _, tt := range tests {
		got := listKeys(t, s, ipam.KindAffinity, tt.r)
		if len(got) != len(tt.want) || (len(got) > 0 && !slices.Equal(got, tt.want)) {
			t.Errorf("List(%+v) keys = %q, want %q", tt.r, got, tt.want)
		}
	}
	// Values and revisions come with the keys.
	recs, err := s.List(ctx(t), ipam.KindAffinity, ipam.PrefixRange("node-b/"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || string(recs[0].Value) != recs[0].Key || recs[0].Revision != mustGet(t, s, ipam.KindAffinity, recs[0].Key).Revision {
		t.Fatalf("List returned %+v; want the record with its value and current revision", recs)
	}
}

func testListEmpty(t *testing.T, s ipam.Store) {
	for _, k := range ipam.Kinds {
		recs, err := s.List(ctx(t), k, ipam.KeyRange{})
		if err != nil || len(recs) != 0 {
			t.Fatalf("List(%s) of an empty store = %v, %v; want nothing and no error", k, recs, err)
		}
	}
}

func testListSeesWrites(t *testing.T, s ipam.Store) {
	rev := mustCreate(t, s, ipam.KindHandle, "h1", []byte("one"))
	mustCreate(t, s, ipam.KindHandle, "h2", []byte("two"))
	rev, err := s.Update(ctx(t), ipam.KindHandle, "h1", []byte("uno"), rev)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := s.List(ctx(t), ipam.KindHandle, ipam.KeyRange{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Key != "h1" || string(recs[0].Value) != "uno" || recs[0].Revision != rev {
		t.Fatalf("List after Update = %+v; want h1=uno at revision %d first", recs, rev)
	}
	if err := s.Delete(ctx(t), ipam.KindHandle, "h1", rev); err != nil {
		t.Fatal(err)
	}
	if got := listKeys(t, s, ipam.KindHandle, ipam.KeyRange{}); !slices.Equal(got, []string{"h2"}) {
		t.Fatalf("List after Delete = %q, want [h2]", got)
	}
	mustCreate(t, s, ipam.KindHandle, "h0", nil)
	if got := listKeys(t, s, ipam.KindHandle, ipam.KeyRange{}); !slices.Equal(got, []string{"h0", "h2"}) {
		t.Fatalf("List after Create = %q, want [h0 h2]", got)
	}
}

func testValues(t *testing.T, s ipam.Store) {
	large := make([]byte, 1<<20)
	for i := range large {
		large[i] = byte(i * 7)
	}
	values := map[string][]byte{
		"empty":  {},
		"nil":    nil,
		"binary": {0, 1, 0xff, 0, 0xfe, '\n', 0},
		"large":  large,
	}
	for name, v := range values {
		rev := mustCreate(t, s, ipam.KindBlock, name, v)
		wantRecord(t, s, ipam.KindBlock, name, v, rev)
	}
	// Updating to an empty value is a real update.
	rev := mustGet(t, s, ipam.KindBlock, "binary").Revision
	rev, err := s.Update(ctx(t), ipam.KindBlock, "binary", nil, rev)
	if err != nil {
		t.Fatal(err)
	}
	wantRecord(t, s, ipam.KindBlock, "binary", nil, rev)
}

func testKeys(t *testing.T, s ipam.Store) {
	long := strings.Repeat("k", ipam.MaxKeyLen-1)
	keys := []string{
		"fd00:0:0:1::/122", "10.244.0.0/26", "k8s-pod-network.0123abcd", "with space",
		"nœud-é", "a%2Fb", "a/b/c", "x", strings.Repeat("k", ipam.MaxKeyLen),
		// Keys a datastore's collation may take for one: case, trailing
		// spaces, and long keys that differ only at the end.
		"Node-A", "node-a", "NODE-A", "t", "t ", "t  ", long + "a", long + "b", long[:300] + "x",
		long[:300] + "y", "B", "a",
		// Keys a store that files records as paths may take for one.
		"p/q", "p//q", "p/./q", "p/q/", "p/r/../q",
	}
	revs := map[string]ipam.Revision{}
	for _, k := range keys {
		revs[k] = mustCreate(t, s, ipam.KindHandle, k, []byte(k))
		wantRecord(t, s, ipam.KindHandle, k, []byte(k), revs[k])
	}
	// Every record is still its own, once all are written.
	for _, k := range keys {
		wantRecord(t, s, ipam.KindHandle, k, []byte(k), revs[k])
	}
	got := listKeys(t, s, ipam.KindHandle, ipam.KeyRange{})
	if want := slices.Sorted(slices.Values(keys)); !slices.Equal(got, want) {
		t.Fatalf("List = %q, want %q (byte order)", got, want)
	}
	if got := listKeys(t, s, ipam.KindHandle, ipam.PrefixRange("node-")); !slices.Equal(got, []string{"node-a"}) {
		t.Fatalf("List(PrefixRange(\"node-\")) = %q, want [node-a]: keys are bytes, not case-folded", got)
	}
	// Deleting one of a pair leaves the other.
	if err := s.Delete(ctx(t), ipam.KindHandle, "t", revs["t"]); err != nil {
		t.Fatal(err)
	}
	wantMissing(t, s, ipam.KindHandle, "t")
	wantRecord(t, s, ipam.KindHandle, "t ", []byte("t "), revs["t "])
}

func testCancelledContext(t *testing.T, s ipam.Store) {
	rev := mustCreate(t, s, ipam.KindBlock, "b", []byte("v"))
	c, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Get(c, ipam.KindBlock, "b"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := s.List(c, ipam.KindBlock, ipam.KeyRange{}); !errors.Is(err, context.Canceled) {
		t.Errorf("List with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := s.Create(c, ipam.KindBlock, "new", []byte("v")); !errors.Is(err, context.Canceled) {
		t.Errorf("Create with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := s.Update(c, ipam.KindBlock, "b", []byte("w"), rev); !errors.Is(err, context.Canceled) {
		t.Errorf("Update with a cancelled context: %v, want context.Canceled", err)
	}
	if err := s.Delete(c, ipam.KindBlock, "b", rev); !errors.Is(err, context.Canceled) {
		t.Errorf("Delete with a cancelled context: %v, want context.Canceled", err)
	}
	// A context that is done before the call writes nothing.
	wantMissing(t, s, ipam.KindBlock, "new")
	wantRecord(t, s, ipam.KindBlock, "b", []byte("v"), rev)

	// An expired deadline, likewise.
	c, cancel = context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := s.Get(c, ipam.KindBlock, "b"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get with an expired context: %v, want context.DeadlineExceeded", err)
	}
	if _, err := s.List(c, ipam.KindBlock, ipam.KeyRange{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("List with an expired context: %v, want context.DeadlineExceeded", err)
	}
	if _, err := s.Create(c, ipam.KindBlock, "new", []byte("v")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Create with an expired context: %v, want context.DeadlineExceeded", err)
	}
	if _, err := s.Update(c, ipam.KindBlock, "b", []byte("w"), rev); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Update with an expired context: %v, want context.DeadlineExceeded", err)
	}
	if err := s.Delete(c, ipam.KindBlock, "b", rev); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Delete with an expired context: %v, want context.DeadlineExceeded", err)
	}
	wantMissing(t, s, ipam.KindBlock, "new")
	wantRecord(t, s, ipam.KindBlock, "b", []byte("v"), rev)
}

const racers = 8

// race runs f in racers goroutines released at once and returns their errors.
func race(f func(i int) error) []error {
	errs := make([]error, racers)
	var start, done sync.WaitGroup
	start.Add(1)
	for i := range racers {
		done.Add(1)
		go func() {
			defer done.Done()
			start.Wait()
			errs[i] = f(i)
		}()
	}
	start.Done()
	done.Wait()
	return errs
}

// exactlyOne checks that one error is nil and every other matches loser.
func exactlyOne(t *testing.T, op string, errs []error, losers ...error) int {
	t.Helper()
	winner := -1
	for i, err := range errs {
		if err == nil {
			if winner >= 0 {
				t.Fatalf("%s: racers %d and %d both succeeded", op, winner, i)
			}
			winner = i
			continue
		}
		if !slices.ContainsFunc(losers, func(l error) bool { return errors.Is(err, l) }) {
			t.Fatalf("%s: racer %d failed with %v, want one of %v", op, i, err, losers)
		}
	}
	if winner < 0 {
		t.Fatalf("%s: no racer succeeded", op)
	}
	return winner
}

func testRaceUpdate(t *testing.T, s ipam.Store) {
	for round := range 20 {
		key := fmt.Sprintf("b%d", round)
		rev := mustCreate(t, s, ipam.KindBlock, key, []byte("start"))
		revs := make([]ipam.Revision, racers)
		errs := race(func(i int) error {
			var err error
			revs[i], err = s.Update(ctx(t), ipam.KindBlock, key, fmt.Appendf(nil, "writer %d", i), rev)
			return err
		})
		w := exactlyOne(t, "racing Update", errs, ipam.ErrConflict)
		wantRecord(t, s, ipam.KindBlock, key, fmt.Appendf(nil, "writer %d", w), revs[w])
	}
}

func testRaceCreate(t *testing.T, s ipam.Store) {
	for round := range 20 {
		key := fmt.Sprintf("h%d", round)
		revs := make([]ipam.Revision, racers)
		errs := race(func(i int) error {
			var err error
			revs[i], err = s.Create(ctx(t), ipam.KindHandle, key, fmt.Appendf(nil, "creator %d", i))
			return err
		})
		w := exactlyOne(t, "racing Create", errs, ipam.ErrExists)
		wantRecord(t, s, ipam.KindHandle, key, fmt.Appendf(nil, "creator %d", w), revs[w])
	}
}

func testRaceDelete(t *testing.T, s ipam.Store) {
	for round := range 20 {
		key := fmt.Sprintf("a%d", round)
		rev := mustCreate(t, s, ipam.KindAffinity, key, nil)
		errs := race(func(int) error { return s.Delete(ctx(t), ipam.KindAffinity, key, rev) })
		exactlyOne(t, "racing Delete", errs, ipam.ErrConflict, ipam.ErrNotFound)
		wantMissing(t, s, ipam.KindAffinity, key)
	}
}

// testRaceCounter increments one record from many goroutines with
// read-modify-write loops: the total is exact only if compare-and-swap is.
func testRaceCounter(t *testing.T, s ipam.Store) {
	const perRacer = 40
	mustCreate(t, s, ipam.KindConfig, "counter", []byte("0"))
	errs := race(func(int) error {
		for range perRacer {
			for {
				rec, err := s.Get(ctx(t), ipam.KindConfig, "counter")
				if err != nil {
					return err
				}
				var n int
				if _, err := fmt.Sscan(string(rec.Value), &n); err != nil {
					return err
				}
				_, err = s.Update(ctx(t), ipam.KindConfig, "counter", fmt.Append(nil, n+1), rec.Revision)
				if errors.Is(err, ipam.ErrConflict) {
					continue
				}
				if err != nil {
					return err
				}
				break
			}
		}
		return nil
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	want := fmt.Append(nil, racers*perRacer)
	if got := mustGet(t, s, ipam.KindConfig, "counter").Value; !bytes.Equal(got, want) {
		t.Fatalf("counter = %s after %d compare-and-swap increments, want %s", got, racers*perRacer, want)
	}
}

// testRaceCreateDelete has goroutines create and delete one key at random;
// the successes must account exactly for the final state.
func testRaceCreateDelete(t *testing.T, s ipam.Store) {
	const perRacer = 60
	var mu sync.Mutex
	creates, deletes := 0, 0
	errs := race(func(i int) error {
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		for range perRacer {
			if rng.IntN(2) == 0 {
				_, err := s.Create(ctx(t), ipam.KindBlock, "contested", []byte("x"))
				if err == nil {
					mu.Lock()
					creates++
					mu.Unlock()
				} else if !errors.Is(err, ipam.ErrExists) {
					return err
				}
				continue
			}
			rec, err := s.Get(ctx(t), ipam.KindBlock, "contested")
			if errors.Is(err, ipam.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			err = s.Delete(ctx(t), ipam.KindBlock, "contested", rec.Revision)
			if err == nil {
				mu.Lock()
				deletes++
				mu.Unlock()
			} else if !errors.Is(err, ipam.ErrConflict) && !errors.Is(err, ipam.ErrNotFound) {
				return err
			}
		}
		return nil
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.Get(ctx(t), ipam.KindBlock, "contested")
	exists := err == nil
	if err != nil && !errors.Is(err, ipam.ErrNotFound) {
		t.Fatal(err)
	}
	want := 0
	if exists {
		want = 1
	}
	if creates-deletes != want {
		t.Fatalf("%d successful creates and %d successful deletes, but the record exists=%v", creates, deletes, exists)
	}
}

func testGenerations(t *testing.T, s ipam.Store) {
	g := s.(ipam.Generations)
	moved := func(kind ipam.Kind, op string, f func()) {
		t.Helper()
		before := g.Generation(kind)
		f()
		if g.Generation(kind) == before {
			t.Fatalf("Generation(%s) did not change after %s", kind, op)
		}
	}
	for _, k := range ipam.Kinds {
		var rev ipam.Revision
		moved(k, "Create", func() { rev = mustCreate(t, s, k, "g", []byte("1")) })
		moved(k, "Update", func() {
			var err error
			if rev, err = s.Update(ctx(t), k, "g", []byte("2"), rev); err != nil {
				t.Fatal(err)
			}
		})
		moved(k, "Delete", func() {
			if err := s.Delete(ctx(t), k, "g", rev); err != nil {
				t.Fatal(err)
			}
		})
	}
	// Writes of a record other than the kind's last written, which leave
	// the kind's newest record as it was, move it too.
	for _, k := range ipam.Kinds {
		var older ipam.Revision
		moved(k, "Create of a first record", func() { older = mustCreate(t, s, k, "older", []byte("1")) })
		moved(k, "Create of a second record", func() { mustCreate(t, s, k, "newer", []byte("1")) })
		moved(k, "Delete of the first record, the second still there", func() {
			if err := s.Delete(ctx(t), k, "older", older); err != nil {
				t.Fatal(err)
			}
		})
	}
	// A BlockKeeper's writes are creates and updates of block records.
	if bk, ok := s.(ipam.BlockKeeper); ok {
		var rev ipam.Revision
		moved(ipam.KindBlock, "CreateBlock", func() {
			var err error
			if rev, err = bk.CreateBlock(ctx(t), "kept", testBlock(t, "h", 1)); err != nil {
				t.Fatal(err)
			}
		})
		moved(ipam.KindBlock, "UpdateBlock", func() {
			if _, err := bk.UpdateBlock(ctx(t), "kept", testBlock(t, "h", 2), rev); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// testRaceGenerations checks that a kind's generation moves once a write
// is visible, not before: a reader that reads the generation and then the
// record, as an allocator fills its cache, and finds the generation the
// writer sees once its write has returned, reads that write. Each round
// is one update of the record (every other one in a commit, with a
// record of another kind, when the store is a Committer), with readers
// reading throughout; a round ends when the writer has read the
// generation after its write and the readers have stopped.
func testRaceGenerations(t *testing.T, s ipam.Store) {
	const rounds = 150
	g := s.(ipam.Generations)
	rev := mustCreate(t, s, ipam.KindPool, "default", []byte("0"))
	cm, commits := s.(ipam.Committer)
	other := mustCreate(t, s, ipam.KindConfig, "default", []byte("0"))
	type seen struct {
		gen   uint64
		value string
	}
	for round := 1; round <= rounds; round++ {
		var stop atomic.Bool
		var wg, started sync.WaitGroup
		obs := make([][]seen, 2)
		errs := make([]error, 2)
		// Only what readers see once the generation has moved from where
		// it was before the write counts: a reader that read it many times
		// before (the writer descheduled on a busy machine) must not have
		// stopped recording by the time the write comes.
		before := g.Generation(ipam.KindPool)
		for r := range obs {
			wg.Add(1)
			started.Add(1)
			go func() {
				defer wg.Done()
				first := true
				defer func() {
					if first {
						started.Done()
					}
				}()
				for !stop.Load() {
					gen := g.Generation(ipam.KindPool)
					rec, err := s.Get(ctx(t), ipam.KindPool, "default")
					if err != nil {
						errs[r] = err
						return
					}
					if first {
						first = false
						started.Done()
					}
					if gen == before {
						runtime.Gosched() // let the writer run
						continue
					}
					obs[r] = append(obs[r], seen{gen, string(rec.Value)})
					if len(obs[r]) > 10000 {
						return
					}
				}
			}()
		}
		// The readers are reading when the write comes.
		started.Wait()
		want := strconv.Itoa(round)
		var err error
		if commits && round%2 == 0 {
			revs := make([]ipam.Revision, 2)
			err = cm.Commit(ctx(t), []ipam.Write{
				updateW(ipam.KindConfig, "default", []byte(want), other),
				updateW(ipam.KindPool, "default", []byte(want), rev),
			}, revs)
			other, rev = revs[0], revs[1]
		} else {
			rev, err = s.Update(ctx(t), ipam.KindPool, "default", []byte(want), rev)
		}
		after := g.Generation(ipam.KindPool)
		stop.Store(true)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		for r := range obs {
			if errs[r] != nil {
				t.Fatal(errs[r])
			}
			for _, o := range obs[r] {
				if o.gen == after && o.value != want {
					t.Fatalf("round %d: a reader read Generation(%s) = %d, the generation after the write of %q, then read %q: the generation moved before the write was visible",
						round, ipam.KindPool, o.gen, want, o.value)
				}
			}
		}
	}
}

// testValuesStay checks that what a read returns is the caller's: a value
// a read returned, and the value a write was given, stay as they were
// when the record is written again (a store may keep and return the slices
// it is given, never write into them); a List result stays as it was
// through later Lists; and a caller that changes the Records of a List
// result changes nothing in the store.
func testValuesStay(t *testing.T, s ipam.Store) {
	given := []byte("0123456789")
	rev := mustCreate(t, s, ipam.KindHandle, "h", given)
	mustCreate(t, s, ipam.KindHandle, "i", []byte("other"))
	got := mustGet(t, s, ipam.KindHandle, "h")
	listed, err := s.List(ctx(t), ipam.KindHandle, ipam.KeyRange{})
	if err != nil {
		t.Fatal(err)
	}
	// Updates to values of the same length and shorter, and a delete.
	for _, v := range []string{"abcdefghij", "xy"} {
		if rev, err = s.Update(ctx(t), ipam.KindHandle, "h", []byte(v), rev); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.List(ctx(t), ipam.KindHandle, ipam.PrefixRange("i")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx(t), ipam.KindHandle, "h", rev); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, ipam.KindHandle, "h", []byte("9876543210"))
	if string(given) != "0123456789" {
		t.Fatalf("the value a Create was given is now %q: the store wrote into it", given)
	}
	if string(got.Value) != "0123456789" {
		t.Fatalf("the value a Get returned is now %q: the store wrote into it", got.Value)
	}
	if len(listed) != 2 || listed[0].Key != "h" || string(listed[0].Value) != "0123456789" || listed[1].Key != "i" || string(listed[1].Value) != "other" {
		t.Fatalf("a List result is now %q: the store changed it after returning it", keysOf(listed))
	}

	// The caller changes a List result: the store holds what it held.
	listed, err = s.List(ctx(t), ipam.KindHandle, ipam.KeyRange{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range listed {
		listed[i] = ipam.Record{Key: "changed by the caller", Value: []byte("changed"), Revision: 1}
	}
	_ = append(listed[:0], ipam.Record{Key: "appended by the caller"})
	if got := listKeys(t, s, ipam.KindHandle, ipam.KeyRange{}); !slices.Equal(got, []string{"h", "i"}) {
		t.Fatalf("List = %q after a caller changed an earlier result, want [h i]", got)
	}
	wantRecord(t, s, ipam.KindHandle, "i", []byte("other"), mustGet(t, s, ipam.KindHandle, "i").Revision)
	if v := mustGet(t, s, ipam.KindHandle, "h").Value; string(v) != "9876543210" {
		t.Fatalf("Get = %q after a caller changed a List result, want 9876543210", v)
	}
}

// testRaceListAfterGet checks that List is linearizable with Get: a
// writer creates records one after the other, and a reader that has seen
// one with Get finds it in the List it makes next, for a kind listed on
// the allocation path (affinities) and one listed rarely (handles).
func testRaceListAfterGet(t *testing.T, s ipam.Store) {
	for _, kind := range []ipam.Kind{ipam.KindAffinity, ipam.KindHandle} {
		raceListAfterGet(t, s, kind)
	}
}

func raceListAfterGet(t *testing.T, s ipam.Store, kind ipam.Kind) {
	const n = 100
	key := func(i int) string { return fmt.Sprintf("host:n/%03d", i) }
	var wrote atomic.Int64
	var writeErr error
	done := make(chan struct{})
	defer func() { <-done }() // the writer is gone before the check ends
	go func() {
		defer close(done)
		for i := range n {
			if _, err := s.Create(ctx(t), kind, key(i), []byte(key(i))); err != nil {
				writeErr = err
				return
			}
			wrote.Store(int64(i + 1))
		}
	}()
	for i := 0; i < n; i++ {
		// Wait for record i with Get, then List at once.
		for {
			_, err := s.Get(ctx(t), kind, key(i))
			if err == nil {
				break
			}
			if !errors.Is(err, ipam.ErrNotFound) {
				t.Fatal(err)
			}
			select {
			case <-done:
				if wrote.Load() <= int64(i) {
					t.Fatalf("the writer stopped: %v", writeErr)
				}
			default:
			}
			runtime.Gosched()
		}
		if keys := listKeys(t, s, kind, ipam.PrefixRange("host:n/")); !slices.Contains(keys, key(i)) {
			t.Fatalf("Get(%s, %q) found the record, and the List after it did not (it has %d records)", kind, key(i), len(keys))
		}
	}
	<-done
	if writeErr != nil {
		t.Fatal(writeErr)
	}
}
