package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

// The checks of the optional ipam.Committer capability.

func hasCommitter(s ipam.Store) bool {
	_, ok := s.(ipam.Committer)
	return ok
}

func hasCommitterAndGenerations(s ipam.Store) bool { return hasCommitter(s) && hasGenerations(s) }

func hasCommitterAndBlockKeeper(s ipam.Store) bool { return hasCommitter(s) && hasBlockKeeper(s) }

// unsetRev fills a revs slice before a Commit, so that a check sees which
// revisions the store wrote (a delete's 0 among them). No store hands it
// out in a test.
const unsetRev = ipam.Revision(1<<63 + 0xdead)

// commit calls s's Commit with a copy of writes and a revs slice of its
// own, filled with unsetRev, and returns a copy of the revisions. Once
// Commit has returned it writes over both slices, as carve reuses them: a
// store that kept them would then hold other keys, values and revisions,
// which the checks' later reads find.
func commit(ctx context.Context, s ipam.Store, writes ...ipam.Write) ([]ipam.Revision, error) {
	ws := slices.Clone(writes)
	revs := make([]ipam.Revision, len(writes))
	for i := range revs {
		revs[i] = unsetRev
	}
	err := s.(ipam.Committer).Commit(ctx, ws, revs)
	out := slices.Clone(revs)
	for i := range ws {
		ws[i] = ipam.Write{Kind: ws[i].Kind, Key: "reused-by-the-caller", Value: []byte("reused by the caller"), Rev: unsetRev - 1}
		revs[i] = unsetRev - 1
	}
	return out, err
}

// mustCommit commits writes, which must succeed, and checks the
// revisions: a new non-zero one for a create or an update, 0 for a delete.
func mustCommit(t *testing.T, s ipam.Store, writes ...ipam.Write) []ipam.Revision {
	t.Helper()
	revs, err := commit(ctx(t), s, writes...)
	if err != nil {
		t.Fatalf("Commit(%s): %v", describe(writes), err)
	}
	wantCommitRevs(t, writes, revs)
	return revs
}

// wantCommitRevs checks the revisions a successful Commit returned.
func wantCommitRevs(t *testing.T, writes []ipam.Write, revs []ipam.Revision) {
	t.Helper()
	for i, w := range writes {
		switch {
		case w.Delete && revs[i] != 0:
			t.Fatalf("Commit(%s): revision %d for write %d, a delete; want 0", describe(writes), revs[i], i)
		case w.Delete:
		case revs[i] == 0 || revs[i] == unsetRev:
			t.Fatalf("Commit(%s): revision %d for write %d; want a new non-zero revision", describe(writes), revs[i], i)
		case revs[i] == w.Rev:
			t.Fatalf("Commit(%s): write %d, an update at revision %d, returned that revision again", describe(writes), i, w.Rev)
		}
	}
}

// wantRefused checks that err is a *ipam.CommitError naming writes[index]
// and matching target.
func wantRefused(t *testing.T, op string, err error, index int, target error) {
	t.Helper()
	var ce *ipam.CommitError
	if !errors.As(err, &ce) {
		t.Fatalf("%s: error %v, want a *ipam.CommitError", op, err)
	}
	if ce.Index != index {
		t.Fatalf("%s: CommitError.Index = %d (%v), want %d", op, ce.Index, err, index)
	}
	if !errors.Is(ce.Err, target) || !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want one matching %v", op, err, target)
	}
}

// describe names the writes of a commit, for failure messages.
func describe(writes []ipam.Write) string {
	var b bytes.Buffer
	for i, w := range writes {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(w.String())
	}
	return b.String()
}

func createW(kind ipam.Kind, key string, v []byte) ipam.Write {
	return ipam.Write{Kind: kind, Key: key, Value: v}
}

func updateW(kind ipam.Kind, key string, v []byte, rev ipam.Revision) ipam.Write {
	return ipam.Write{Kind: kind, Key: key, Value: v, Rev: rev}
}

func deleteW(kind ipam.Kind, key string, rev ipam.Revision) ipam.Write {
	return ipam.Write{Kind: kind, Key: key, Rev: rev, Delete: true}
}

// kindKey names a record.
type kindKey struct {
	kind ipam.Kind
	key  string
}

// expected is what a check expects the store to hold, in the kinds it
// writes: every record with its value and revision.
type expected map[ipam.Kind]map[string]ipam.Record

func (e expected) put(kind ipam.Kind, key string, v []byte, rev ipam.Revision) {
	if e[kind] == nil {
		e[kind] = map[string]ipam.Record{}
	}
	e[kind][key] = ipam.Record{Key: key, Value: v, Revision: rev}
}

func (e expected) drop(kind ipam.Kind, key string) { delete(e[kind], key) }

// create creates a record in s and expects it.
func (e expected) create(t *testing.T, s ipam.Store, kind ipam.Kind, key string, v []byte) ipam.Revision {
	t.Helper()
	rev := mustCreate(t, s, kind, key, v)
	e.put(kind, key, v, rev)
	return rev
}

// committed expects what a successful Commit of writes, which returned
// revs, wrote.
func (e expected) committed(writes []ipam.Write, revs []ipam.Revision, values [][]byte) {
	for i, w := range writes {
		if w.Delete {
			e.drop(w.Kind, w.Key)
			continue
		}
		e.put(w.Kind, w.Key, values[i], revs[i])
	}
}

// verify reads the records named by gets, present or not, with Get, and
// checks that s holds exactly the expected records in every kind e names
// (one List each).
func (e expected) verify(t *testing.T, s ipam.Store, when string, gets ...kindKey) {
	t.Helper()
	for _, g := range gets {
		rec, err := s.Get(ctx(t), g.kind, g.key)
		w, ok := e[g.kind][g.key]
		switch {
		case !ok && !errors.Is(err, ipam.ErrNotFound):
			t.Fatalf("%s: Get(%s, %q) = %q at revision %d, %v; want ErrNotFound", when, g.kind, g.key, clip(rec.Value), rec.Revision, err)
		case !ok:
		case err != nil:
			t.Fatalf("%s: Get(%s, %q): %v", when, g.kind, g.key, err)
		case rec.Key != g.key || !bytes.Equal(rec.Value, w.Value) || rec.Revision != w.Revision:
			t.Fatalf("%s: Get(%s, %q) = %q: %q at revision %d, want %q at %d", when, g.kind, g.key, rec.Key, clip(rec.Value), rec.Revision, clip(w.Value), w.Revision)
		}
	}
	for _, kind := range ipam.Kinds {
		want, ok := e[kind]
		if !ok {
			continue
		}
		recs, err := s.List(ctx(t), kind, ipam.KeyRange{})
		if err != nil {
			t.Fatalf("%s: List(%s): %v", when, kind, err)
		}
		for _, r := range recs {
			w, ok := want[r.Key]
			switch {
			case !ok:
				t.Fatalf("%s: List(%s) has %q at revision %d, which should not exist", when, kind, r.Key, r.Revision)
			case !bytes.Equal(r.Value, w.Value) || r.Revision != w.Revision:
				t.Fatalf("%s: List(%s) has %q = %q at revision %d, want %q at %d", when, kind, r.Key, clip(r.Value), r.Revision, clip(w.Value), w.Revision)
			}
		}
		if len(recs) != len(want) {
			t.Fatalf("%s: List(%s) has keys %q, want %d records", when, kind, keysOf(recs), len(want))
		}
	}
}

// testCommitApplies: a commit of a create, an update and a delete, of
// different kinds, makes all three, with the revisions it returns; a
// commit of one write, and one of MaxCommitWrites writes of every kind.
func testCommitApplies(t *testing.T, s ipam.Store) {
	c := ctx(t)
	want := expected{}
	ru := want.create(t, s, ipam.KindBlock, "u", []byte("old"))
	rd := want.create(t, s, ipam.KindAffinity, "d", []byte("doomed"))
	want.create(t, s, ipam.KindBlock, "other", []byte("left alone"))
	want.create(t, s, ipam.KindHandle, "other", []byte("left alone"))

	writes := []ipam.Write{
		createW(ipam.KindHandle, "c", []byte("created")),
		updateW(ipam.KindBlock, "u", []byte("updated"), ru),
		deleteW(ipam.KindAffinity, "d", rd),
	}
	// A revs slice longer than writes, as the contract allows.
	revs := slices.Repeat([]ipam.Revision{unsetRev}, ipam.MaxCommitWrites)
	if err := s.(ipam.Committer).Commit(c, writes, revs); err != nil {
		t.Fatalf("Commit(%s): %v", describe(writes), err)
	}
	wantCommitRevs(t, writes, revs)
	want.committed(writes, revs, [][]byte{[]byte("created"), []byte("updated"), nil})
	want.verify(t, s, "after a commit of a create, an update and a delete",
		kindKey{ipam.KindHandle, "c"}, kindKey{ipam.KindBlock, "u"}, kindKey{ipam.KindAffinity, "d"},
		kindKey{ipam.KindBlock, "other"}, kindKey{ipam.KindHandle, "other"})

	// The revisions are the records' current ones: single writes at them
	// succeed.
	rc, err := s.Update(c, ipam.KindHandle, "c", []byte("again"), revs[0])
	if err != nil {
		t.Fatalf("Update at the revision a commit created the record at: %v", err)
	}
	want.put(ipam.KindHandle, "c", []byte("again"), rc)
	if err := s.Delete(c, ipam.KindBlock, "u", revs[1]); err != nil {
		t.Fatalf("Delete at the revision a commit updated the record to: %v", err)
	}
	want.drop(ipam.KindBlock, "u")

	// One write.
	one := []ipam.Write{createW(ipam.KindConfig, "default", []byte("config"))}
	want.committed(one, mustCommit(t, s, one...), [][]byte{[]byte("config")})

	// MaxCommitWrites writes: a create in every kind, with empty values
	// among them, and an update.
	var many []ipam.Write
	var values [][]byte
	for i, k := range ipam.Kinds {
		var v []byte
		switch i {
		case 0:
			v = []byte{} // empty
		case 1: // nil
		default:
			v = []byte("many " + k.String())
		}
		many = append(many, createW(k, "many", v))
		values = append(values, v)
	}
	many = append(many, updateW(ipam.KindHandle, "c", []byte("updated among many"), rc))
	values = append(values, []byte("updated among many"))
	if n := ipam.MaxCommitWrites; len(many) > n {
		many, values = many[:n], values[:n]
	}
	want.committed(many, mustCommit(t, s, many...), values)
	gets := []kindKey{{ipam.KindHandle, "c"}, {ipam.KindBlock, "u"}, {ipam.KindConfig, "default"}}
	for _, k := range ipam.Kinds {
		gets = append(gets, kindKey{k, "many"})
		if want[k] == nil {
			want[k] = map[string]ipam.Record{}
		}
	}
	want.verify(t, s, fmt.Sprintf("after a commit of %d writes", len(many)), gets...)
}

// refusal is a write a commit must refuse: set it up in s and return it
// with the error it must match.
type refusal struct {
	name  string
	err   error
	setup func(t *testing.T, s ipam.Store, want expected, key string) ipam.Write
}

var refusals = []refusal{
	{"create of an existing record", ipam.ErrExists, func(t *testing.T, s ipam.Store, want expected, key string) ipam.Write {
		want.create(t, s, ipam.KindHandle, key, []byte("there"))
		return createW(ipam.KindHandle, key, []byte("again"))
	}},
	{"update at a stale revision", ipam.ErrConflict, func(t *testing.T, s ipam.Store, want expected, key string) ipam.Write {
		rev := mustCreate(t, s, ipam.KindBlock, key, []byte("v1"))
		rev2, err := s.Update(ctx(t), ipam.KindBlock, key, []byte("v2"), rev)
		if err != nil {
			t.Fatal(err)
		}
		want.put(ipam.KindBlock, key, []byte("v2"), rev2)
		return updateW(ipam.KindBlock, key, []byte("stale"), rev)
	}},
	{"update of a missing record", ipam.ErrNotFound, func(t *testing.T, s ipam.Store, want expected, key string) ipam.Write {
		rev := mustCreate(t, s, ipam.KindBlock, key, []byte("v1"))
		if err := s.Delete(ctx(t), ipam.KindBlock, key, rev); err != nil {
			t.Fatal(err)
		}
		return updateW(ipam.KindBlock, key, []byte("ghost"), rev)
	}},
	{"delete at a stale revision", ipam.ErrConflict, func(t *testing.T, s ipam.Store, want expected, key string) ipam.Write {
		rev := mustCreate(t, s, ipam.KindAffinity, key, []byte("v1"))
		rev2, err := s.Update(ctx(t), ipam.KindAffinity, key, []byte("v2"), rev)
		if err != nil {
			t.Fatal(err)
		}
		want.put(ipam.KindAffinity, key, []byte("v2"), rev2)
		return deleteW(ipam.KindAffinity, key, rev)
	}},
	{"delete of a missing record", ipam.ErrNotFound, func(t *testing.T, s ipam.Store, want expected, key string) ipam.Write {
		rev := mustCreate(t, s, ipam.KindAffinity, key, nil)
		if err := s.Delete(ctx(t), ipam.KindAffinity, key, rev); err != nil {
			t.Fatal(err)
		}
		return deleteW(ipam.KindAffinity, key, rev)
	}},
	{"delete at revision 0", ipam.ErrConflict, func(t *testing.T, s ipam.Store, want expected, key string) ipam.Write {
		want.create(t, s, ipam.KindHandle, key, []byte("v"))
		return deleteW(ipam.KindHandle, key, 0)
	}},
	{"delete at revision 0 of a missing record", ipam.ErrNotFound, func(t *testing.T, s ipam.Store, want expected, key string) ipam.Write {
		return deleteW(ipam.KindHandle, key, 0)
	}},
}

// validWrites sets up three writes that can be committed: a create, an
// update and a delete, of records whose keys begin with prefix.
func validWrites(t *testing.T, s ipam.Store, want expected, prefix string) ([]ipam.Write, [][]byte) {
	t.Helper()
	ru := want.create(t, s, ipam.KindBlock, prefix+"update", []byte("before"))
	rd := want.create(t, s, ipam.KindAffinity, prefix+"delete", []byte("before"))
	return []ipam.Write{
			createW(ipam.KindHandle, prefix+"create", []byte("created")),
			updateW(ipam.KindBlock, prefix+"update", []byte("updated"), ru),
			deleteW(ipam.KindAffinity, prefix+"delete", rd),
		}, [][]byte{
			[]byte("created"), []byte("updated"), nil,
		}
}

func keysOfWrites(writes []ipam.Write) []kindKey {
	var out []kindKey
	for _, w := range writes {
		out = append(out, kindKey{w.Kind, w.Key})
	}
	return out
}

// rotate returns ws rotated left by k: ws[k] comes first.
func rotate(ws []ipam.Write, k int) []ipam.Write { return slices.Concat(ws[k:], ws[:k]) }

// testCommitRefused: a commit with a write whose check fails, first, in the
// middle or last among writes that would succeed, changes nothing and
// names the write; with two such writes it names the first. The valid
// writes then commit on their own.
func testCommitRefused(t *testing.T, s ipam.Store) {
	want := expected{ipam.KindHandle: {}, ipam.KindBlock: {}, ipam.KindAffinity: {}}
	n := 0
	for _, r := range refusals {
		for _, at := range []int{0, 2, 3} {
			n++
			prefix := fmt.Sprintf("case%d/", n)
			valid, values := validWrites(t, s, want, prefix)
			bad := r.setup(t, s, want, prefix+"bad")
			writes := slices.Insert(slices.Clone(valid), at, bad)
			when := fmt.Sprintf("a commit with a %s at write %d of %d", r.name, at, len(writes))
			_, err := commit(ctx(t), s, writes...)
			wantRefused(t, when, err, at, r.err)
			want.verify(t, s, "after "+when, keysOfWrites(writes)...)

			revs := mustCommit(t, s, valid...)
			want.committed(valid, revs, values)
			want.verify(t, s, "after a commit of the other writes of "+when, keysOfWrites(valid)...)
		}
	}

	// Two failing writes: the error names the first.
	for i, pair := range [][2]refusal{{refusals[1], refusals[4]}, {refusals[4], refusals[0]}} {
		prefix := fmt.Sprintf("two%d/", i)
		valid, _ := validWrites(t, s, want, prefix)
		first := pair[0].setup(t, s, want, prefix+"bad1")
		second := pair[1].setup(t, s, want, prefix+"bad2")
		writes := []ipam.Write{valid[0], first, valid[1], second, valid[2]}
		when := fmt.Sprintf("a commit with a %s at write 1 and a %s at write 3", pair[0].name, pair[1].name)
		_, err := commit(ctx(t), s, writes...)
		wantRefused(t, when, err, 1, pair[0].err)
		want.verify(t, s, "after "+when, keysOfWrites(writes)...)
	}
}

// testCommitRevisionsNeverRepeat: the ABA rule holds across commits and
// single writes: a record deleted by one and created again by the other
// never gets a revision its key had, and old revisions are refused.
func testCommitRevisionsNeverRepeat(t *testing.T, s ipam.Store) {
	c := ctx(t)
	// The same key in two kinds.
	blk, hdl := kindKey{ipam.KindBlock, "r"}, kindKey{ipam.KindHandle, "r"}
	seen := map[kindKey]map[ipam.Revision]bool{blk: {}, hdl: {}}
	var old []ipam.Revision // of blk
	note := func(k kindKey, rev ipam.Revision) ipam.Revision {
		t.Helper()
		if seen[k][rev] {
			t.Fatalf("revision %d handed out twice for %s %q", rev, k.kind, k.key)
		}
		seen[k][rev] = true
		if k == blk {
			old = append(old, rev)
		}
		return rev
	}
	update := func(k kindKey, v string, rev ipam.Revision) ipam.Revision {
		t.Helper()
		rev, err := s.Update(c, k.kind, k.key, []byte(v), rev)
		if err != nil {
			t.Fatalf("Update(%s, %q): %v", k.kind, k.key, err)
		}
		return note(k, rev)
	}
	for i := range 6 {
		// Create both in a commit, update one alone, update both in a
		// commit.
		revs := mustCommit(t, s, createW(blk.kind, blk.key, []byte("c1")), createW(hdl.kind, hdl.key, []byte("c1")))
		rb, rh := note(blk, revs[0]), note(hdl, revs[1])
		rb = update(blk, "u1", rb)
		revs = mustCommit(t, s, updateW(blk.kind, blk.key, []byte("u2"), rb), updateW(hdl.kind, hdl.key, []byte("u2"), rh))
		rb, rh = note(blk, revs[0]), note(hdl, revs[1])

		// Delete one in a commit and create it again alone.
		revs = mustCommit(t, s, deleteW(blk.kind, blk.key, rb), updateW(hdl.kind, hdl.key, []byte("u3"), rh))
		rh = note(hdl, revs[1])
		rb = note(blk, mustCreate(t, s, blk.kind, blk.key, []byte("c2")))
		revs = mustCommit(t, s, updateW(blk.kind, blk.key, []byte("u4"), rb), deleteW(hdl.kind, hdl.key, rh))
		rb = note(blk, revs[0])

		// Every earlier revision of the block record is refused, by commits
		// and by single writes, and changes nothing.
		for j, o := range old[:len(old)-1] {
			w := updateW(blk.kind, blk.key, []byte("from the past"), o)
			if j%2 == 1 {
				w = deleteW(blk.kind, blk.key, o)
			}
			_, err := commit(c, s, w)
			wantRefused(t, fmt.Sprintf("Commit(%s) with an earlier revision", describe([]ipam.Write{w})), err, 0, ipam.ErrConflict)
		}
		if _, err := s.Update(c, blk.kind, blk.key, []byte("from the past"), old[len(old)-2]); !errors.Is(err, ipam.ErrConflict) {
			t.Fatalf("Update with the revision before the current one: %v, want ErrConflict", err)
		}
		wantRecord(t, s, blk.kind, blk.key, []byte("u4"), rb)
		wantMissing(t, s, hdl.kind, hdl.key)

		// Delete one alone, create the other alone, delete it in a commit.
		if err := s.Delete(c, blk.kind, blk.key, rb); err != nil {
			t.Fatal(err)
		}
		rh = note(hdl, mustCreate(t, s, hdl.kind, hdl.key, fmt.Appendf(nil, "round %d", i)))
		mustCommit(t, s, deleteW(hdl.kind, hdl.key, rh))
	}
}

// testCommitCancelledContext: a commit with a done context makes none of
// its writes.
func testCommitCancelledContext(t *testing.T, s ipam.Store) {
	want := expected{ipam.KindHandle: {}, ipam.KindBlock: {}, ipam.KindAffinity: {}}
	writes, _ := validWrites(t, s, want, "")
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := commit(cancelled, s, writes...)
	wantErr(t, "Commit with a cancelled context", err, context.Canceled)
	want.verify(t, s, "after a commit with a cancelled context", keysOfWrites(writes)...)

	expired, cancel := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	_, err = commit(expired, s, writes...)
	wantErr(t, "Commit with an expired context", err, context.DeadlineExceeded)
	want.verify(t, s, "after a commit with an expired context", keysOfWrites(writes)...)
}

// testRaceCommit: racing commits holding the same revisions, exactly one
// wins. The losers' commits come after the winner's, which changed every
// record they write, so they are refused at their first write.
func testRaceCommit(t *testing.T, s ipam.Store) {
	const rounds = 25
	want := expected{ipam.KindAffinity: {}}
	for round := range rounds {
		a, b := fmt.Sprintf("a%d", round), fmt.Sprintf("b%d", round)
		ra := want.create(t, s, ipam.KindBlock, a, []byte("start"))
		rb := want.create(t, s, ipam.KindHandle, b, []byte("start"))
		var base []ipam.Write
		if round%2 == 0 {
			// Two updates.
			base = []ipam.Write{
				updateW(ipam.KindBlock, a, nil, ra),
				updateW(ipam.KindHandle, b, nil, rb),
			}
		} else {
			// An update, a delete and a create.
			base = []ipam.Write{
				updateW(ipam.KindBlock, a, nil, ra),
				deleteW(ipam.KindHandle, b, rb),
				createW(ipam.KindAffinity, fmt.Sprintf("c%d", round), nil),
			}
		}
		// Each racer writes its own values, its writes in an order of its
		// own: rotated, and then reversed for every other rotation.
		writes := make([][]ipam.Write, racers)
		values := make([][][]byte, racers)
		for i := range racers {
			ws := slices.Clone(base)
			for j := range ws {
				if !ws[j].Delete {
					ws[j].Value = fmt.Appendf(nil, "racer %d", i)
				}
			}
			ws = rotate(ws, i%len(ws))
			if i/len(ws)%2 == 1 {
				slices.Reverse(ws)
			}
			writes[i] = ws
			for _, w := range ws {
				values[i] = append(values[i], w.Value)
			}
		}
		revs := make([][]ipam.Revision, racers)
		errs := race(func(i int) error {
			var err error
			revs[i], err = commit(ctx(t), s, writes[i]...)
			return err
		})
		w := exactlyOne(t, "racing Commit", errs, ipam.ErrConflict, ipam.ErrNotFound, ipam.ErrExists)
		wantCommitRevs(t, writes[w], revs[w])
		for i, err := range errs {
			if i == w {
				continue
			}
			first := writes[i][0]
			var target error
			switch {
			case first.Delete:
				target = ipam.ErrNotFound // the winner deleted it
			case first.Rev == 0:
				target = ipam.ErrExists // the winner created it
			default:
				target = ipam.ErrConflict // the winner updated it
			}
			// The winner changed every record a loser writes, so a
			// loser's first write is the first to fail; another index
			// means the loser's checks ran while the winner's writes were
			// being made: the two commits overlapped.
			wantRefused(t, fmt.Sprintf("racer %d's Commit(%s), after racer %d's (if the index is not 0, the two commits overlapped)", i, describe(writes[i]), w), err, 0, target)
		}
		want.committed(writes[w], revs[w], values[w])
		want.verify(t, s, fmt.Sprintf("after racing commits, round %d", round), keysOfWrites(writes[w])...)
	}
}

// testRaceCommitReaders: writers commit one counter into three records,
// two of them of one kind, retrying on conflict; readers read the records
// one after the other, and never see a later read return an older value
// than an earlier read of another record of the commit, nor a value of
// one record go back. A List that returns two records of one commit
// returns both of the same commit. Run it with the race detector.
func testRaceCommitReaders(t *testing.T, s ipam.Store) {
	const (
		commits  = 400
		writers  = 2
		maxReads = 2 * commits // per reader, to bound the round trips
	)
	c := ctx(t)
	recA, recB, recC := kindKey{ipam.KindBlock, "a"}, kindKey{ipam.KindHandle, "b"}, kindKey{ipam.KindBlock, "c"}
	records := []kindKey{recA, recB, recC}
	for _, r := range records {
		mustCreate(t, s, r.kind, r.key, []byte("0"))
	}
	parse := func(v []byte) (int, error) {
		n, err := strconv.Atoi(string(v))
		if err != nil {
			return 0, fmt.Errorf("a record holds %q, not a counter", v)
		}
		return n, nil
	}
	var stop, writersDone atomic.Bool
	var wg, writing sync.WaitGroup
	errs := make(chan error, writers+3)
	fail := func(err error) {
		errs <- err
		stop.Store(true)
	}

	// A writer reads the three records, and commits the counter plus one
	// into all three at the revisions it read. It knows the record's
	// revisions after its own commit and reads again only after a
	// conflict.
	var committed atomic.Int64
	for wr := range writers {
		writing.Add(1)
		go func() {
			defer writing.Done()
			var n int
			var revs []ipam.Revision
			read := func() error {
				revs = revs[:0]
				for i, r := range records {
					rec, err := s.Get(c, r.kind, r.key)
					if err != nil {
						return err
					}
					if i == 0 {
						if n, err = parse(rec.Value); err != nil {
							return err
						}
					}
					revs = append(revs, rec.Revision)
				}
				return nil
			}
			if err := read(); err != nil {
				fail(err)
				return
			}
			for !stop.Load() && n < commits {
				v := strconv.AppendInt(nil, int64(n+1), 10)
				writes := make([]ipam.Write, len(records))
				for i, r := range records {
					writes[i] = updateW(r.kind, r.key, v, revs[i])
				}
				// Each writer its own order.
				k := wr % len(writes)
				writes = rotate(writes, k)
				revsOut := make([]ipam.Revision, len(writes))
				err := s.(ipam.Committer).Commit(c, writes, revsOut)
				var ce *ipam.CommitError
				switch {
				case err == nil:
					committed.Add(1)
					n++
					for i := range writes {
						revs[(i+k)%len(writes)] = revsOut[i]
					}
				case errors.As(err, &ce) && errors.Is(err, ipam.ErrConflict):
					if err := read(); err != nil {
						fail(err)
						return
					}
				default:
					fail(fmt.Errorf("writer %d: Commit: %w", wr, err))
					return
				}
			}
		}()
	}

	// Readers: A then B, B then A, and List of A and C.
	reader := func(first, second kindKey) {
		defer wg.Done()
		last := map[kindKey]int{}
		get := func(r kindKey) (int, bool) {
			rec, err := s.Get(c, r.kind, r.key)
			if err != nil {
				fail(err)
				return 0, false
			}
			n, err := parse(rec.Value)
			if err != nil {
				fail(err)
				return 0, false
			}
			if n < last[r] {
				fail(fmt.Errorf("%s %q read %d after %d: a record's value went back", r.kind, r.key, n, last[r]))
				return 0, false
			}
			last[r] = n
			return n, true
		}
		for range maxReads {
			if stop.Load() || writersDone.Load() {
				return
			}
			n1, ok := get(first)
			if !ok {
				return
			}
			n2, ok := get(second)
			if !ok {
				return
			}
			if n2 < n1 {
				fail(fmt.Errorf("read %s %q = %d, then %s %q = %d: a commit wrote both, and a read saw only one of its writes",
					first.kind, first.key, n1, second.kind, second.key, n2))
				return
			}
		}
	}
	wg.Add(3)
	go reader(recA, recB)
	go reader(recB, recA)
	go func() {
		defer wg.Done()
		for range maxReads {
			if stop.Load() || writersDone.Load() {
				return
			}
			recs, err := s.List(c, ipam.KindBlock, ipam.KeyRange{})
			if err != nil {
				fail(err)
				return
			}
			if len(recs) != 2 || recs[0].Key != recA.key || recs[1].Key != recC.key {
				fail(fmt.Errorf("List(%s) = %q, want [a c]", ipam.KindBlock, keysOf(recs)))
				return
			}
			if !bytes.Equal(recs[0].Value, recs[1].Value) {
				fail(fmt.Errorf("List(%s) returned a = %s and c = %s: a commit wrote both, and one List saw only one of its writes", ipam.KindBlock, recs[0].Value, recs[1].Value))
				return
			}
		}
	}()
	// Writers stop when the counter reaches commits, and readers when
	// the writers are done.
	writing.Wait()
	writersDone.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := committed.Load(); got != commits {
		t.Fatalf("%d commits succeeded, want %d: each raises the counter by one", got, commits)
	}
	want := []byte(strconv.Itoa(commits))
	for _, r := range records {
		if got := mustGet(t, s, r.kind, r.key).Value; !bytes.Equal(got, want) {
			t.Fatalf("%s %q = %s after %d commits, want %s", r.kind, r.key, got, commits, want)
		}
	}
}

// testCommitGenerations: a commit moves the generation of every kind it
// writes, whether it creates, updates or deletes.
func testCommitGenerations(t *testing.T, s ipam.Store) {
	g := s.(ipam.Generations)
	moved := func(op string, writes []ipam.Write) []ipam.Revision {
		t.Helper()
		before := map[ipam.Kind]uint64{}
		for _, w := range writes {
			before[w.Kind] = g.Generation(w.Kind)
		}
		revs := mustCommit(t, s, writes...)
		for k, gen := range before {
			if g.Generation(k) == gen {
				t.Fatalf("Generation(%s) did not change after a commit (%s) of %s", k, op, describe(writes))
			}
		}
		return revs
	}
	// Each kind alone: a create, an update and a delete.
	for _, k := range ipam.Kinds {
		revs := moved("create", []ipam.Write{createW(k, "g", []byte("1"))})
		revs = moved("update", []ipam.Write{updateW(k, "g", []byte("2"), revs[0])})
		moved("delete", []ipam.Write{deleteW(k, "g", revs[0])})
	}
	// Every kind at once, the kinds mixed with each other's writes.
	var writes []ipam.Write
	for _, k := range ipam.Kinds {
		writes = append(writes, createW(k, "all", []byte("1")))
	}
	revs := moved("create of every kind", writes)
	rev := map[ipam.Kind]ipam.Revision{}
	for i, w := range writes {
		rev[w.Kind] = revs[i]
	}
	mixed := []ipam.Write{
		updateW(ipam.KindPool, "all", []byte("2"), rev[ipam.KindPool]),
		deleteW(ipam.KindBlock, "all", rev[ipam.KindBlock]),
		createW(ipam.KindAffinity, "more", nil),
		deleteW(ipam.KindHandle, "all", rev[ipam.KindHandle]),
		updateW(ipam.KindNode, "all", []byte("2"), rev[ipam.KindNode]),
	}
	moved("mixed", mixed)
}

// testCommitBlockKeeper: a write carrying a block is a create or update of
// the block's encoding, mixes with byte writes in a commit, and the store
// does not modify the block. A refused commit keeps none of its blocks.
func testCommitBlockKeeper(t *testing.T, s ipam.Store) {
	b1, b2, b3 := testBlock(t, "h1", 3), testBlock(t, "h2", 5), testBlock(t, "h3", 7)
	enc1, enc2, enc3 := encoding(t, b1), encoding(t, b2), encoding(t, b3)
	blockW := func(key string, b *block.Block, rev ipam.Revision) ipam.Write {
		return ipam.Write{Kind: ipam.KindBlock, Key: key, Block: b, Rev: rev}
	}
	want := expected{}
	rBytes := want.create(t, s, ipam.KindBlock, "bytes", []byte("bytes"))
	gets := []kindKey{{ipam.KindBlock, "kept"}, {ipam.KindBlock, "bytes"}, {ipam.KindBlock, "new bytes"}, {ipam.KindHandle, "h"}}

	// A create of a block, a block over bytes, and byte writes.
	writes := []ipam.Write{
		blockW("kept", b1, 0),
		createW(ipam.KindHandle, "h", []byte("handle")),
		blockW("bytes", b2, rBytes),
		createW(ipam.KindBlock, "new bytes", []byte("plain")),
	}
	revs := mustCommit(t, s, writes...)
	want.committed(writes, revs, [][]byte{enc1, []byte("handle"), enc2, []byte("plain")})
	// List first, then Get, then both again: reads of either kind may be
	// the first of a kept block.
	want.verify(t, s, "after a commit of blocks and bytes")
	want.verify(t, s, "after a commit of blocks and bytes", gets...)

	// A refused commit carrying a block keeps none of it, even once the
	// block changes.
	rKept := revs[0]
	b3copy := testBlock(t, "h3", 7)
	refused := []ipam.Write{
		blockW("kept", b3copy, rKept),
		createW(ipam.KindHandle, "h", []byte("exists")),
	}
	_, err := commit(ctx(t), s, refused...)
	wantRefused(t, "a commit of a block update and a create of an existing record", err, 1, ipam.ErrExists)
	want.verify(t, s, "after a refused commit carrying a block", gets...)
	b3copy.Allocate(nil, 1, block.Owner{Handle: "changed after the refusal"})
	want.verify(t, s, "after a block of a refused commit changed", gets...)

	// A block over a block, bytes over a block, and a delete of a block.
	writes = []ipam.Write{
		blockW("kept", b3, rKept),
		updateW(ipam.KindBlock, "bytes", []byte("bytes again"), revs[2]),
		blockW("new bytes", b1, revs[3]),
	}
	revs = mustCommit(t, s, writes...)
	want.committed(writes, revs, [][]byte{enc3, []byte("bytes again"), enc1})
	want.verify(t, s, "after a commit of a block over a block and bytes over a block", gets...)
	writes = []ipam.Write{
		deleteW(ipam.KindBlock, "kept", revs[0]),
		updateW(ipam.KindHandle, "h", []byte("handle 2"), want[ipam.KindHandle]["h"].Revision),
	}
	want.committed(writes, mustCommit(t, s, writes...), [][]byte{nil, []byte("handle 2")})
	want.verify(t, s, "after a commit deleting a kept block", gets...)

	// Reading encoded the blocks without changing them.
	for i, p := range []struct {
		b   *block.Block
		enc []byte
	}{{b1, enc1}, {b2, enc2}, {b3, enc3}} {
		if !bytes.Equal(encoding(t, p.b), p.enc) {
			t.Fatalf("the store modified block %d, which a commit gave it", i+1)
		}
	}
}
