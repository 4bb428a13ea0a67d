package etcdstore

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/carve-ipam/carve/ipam"
)

var _ ipam.Committer = (*Store)(nil)

// Commit implements [ipam.Committer] with one etcd transaction, so one
// round trip: it compares every record's revision as Create, Update and
// Delete do (create revision 0 for a create, the mod revision for an update
// or a delete), and makes every put and delete only if all of them hold.
// When one fails, key-only reads of every record in the same transaction
// tell which write's check failed, and how. On success the revision of
// every put is the transaction's revision.
//
// The store is not an [ipam.BlockKeeper]: it refuses a Write whose Block is
// set.
func (s *Store) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	if err := checkCommit(writes, revs); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		op, key := commitOp(writes)
		return fmt.Errorf("etcdstore: %s %q: %w", op, key, err)
	}
	rctx, cancel := s.request(ctx)
	defer cancel()
	// Whatever the outcome, every written kind may have changed.
	defer func() {
		for i := range writes {
			s.bump(writes[i].Kind)
		}
	}()

	var (
		cmpBuf  [2 * ipam.MaxCommitWrites]clientv3.Cmp
		thenBuf [ipam.MaxCommitWrites]clientv3.Op
		elseBuf [ipam.MaxCommitWrites]clientv3.Op
	)
	cmps, thens, elses := cmpBuf[:0], thenBuf[:0], elseBuf[:0]
	for i := range writes {
		w := &writes[i]
		k := s.etcdKey(w.Kind, w.Key)
		switch {
		case w.Delete:
			cmps = append(cmps, revisionIs(k, w.Rev)...)
			thens = append(thens, clientv3.OpDelete(k))
		case w.Rev == 0:
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			thens = append(thens, clientv3.OpPut(k, string(w.Value)))
		default:
			cmps = append(cmps, revisionIs(k, w.Rev)...)
			thens = append(thens, clientv3.OpPut(k, string(w.Value)))
		}
		elses = append(elses, clientv3.OpGet(k, clientv3.WithKeysOnly()))
	}
	resp, err := s.kv.Txn(rctx).If(cmps...).Then(thens...).Else(elses...).Commit()
	if err != nil {
		op, key := commitOp(writes)
		return s.failure(ctx, rctx, op, key, err)
	}
	if !resp.Succeeded {
		return commitRefused(writes, resp)
	}
	// The puts are the transaction's writes, so they happened at the
	// revision the transaction moved the store to.
	for i := range writes {
		if writes[i].Delete {
			revs[i] = 0
		} else {
			revs[i] = ipam.Revision(resp.Header.Revision)
		}
	}
	return nil
}

// commitOp names a commit in errors that are not about one of its writes:
// the operation, and the key of the first write.
func commitOp(writes []ipam.Write) (op, key string) {
	w := &writes[0]
	return fmt.Sprintf("commit of %d writes, the first %s %s", len(writes), writeOp(w), w.Kind), w.Key
}

// writeOp returns the single operation w stands for.
func writeOp(w *ipam.Write) string {
	switch {
	case w.Delete:
		return "delete"
	case w.Rev == 0:
		return "create"
	}
	return "update"
}

// commitRefused explains the failed compare of a commit from the key-only
// reads in the transaction's else branch, one per write, made on the same
// snapshot as the compares: the first write whose check fails on it is the
// one reported, with the error its single operation would have given.
func commitRefused(writes []ipam.Write, resp *clientv3.TxnResponse) error {
	if len(resp.Responses) != len(writes) {
		op, key := commitOp(writes)
		return fmt.Errorf("etcdstore: %s %q refused, with %d reads for %d writes", op, key, len(resp.Responses), len(writes))
	}
	for i := range writes {
		w := &writes[i]
		kvs := resp.Responses[i].GetResponseRange().GetKvs()
		var err error
		switch {
		case w.Rev == 0 && !w.Delete:
			if len(kvs) != 0 {
				err = existsError(w.Kind, w.Key)
			}
		case len(kvs) == 0:
			err = notFoundError(writeOp(w), w.Kind, w.Key)
		case ipam.Revision(kvs[0].ModRevision) != w.Rev:
			err = conflictError(writeOp(w), w.Kind, w.Key, w.Rev, kvs[0].ModRevision)
		}
		if err != nil {
			return &ipam.CommitError{Index: i, Err: err}
		}
	}
	// The reads see what the compares saw, so one of them fails: this is
	// not expected to happen.
	op, key := commitOp(writes)
	return fmt.Errorf("etcdstore: %s %q refused, but every write's check passes", op, key)
}

// checkCommit checks what Commit is given: 1 to MaxCommitWrites writes to
// different records of valid kinds, none with a block, and room for the
// revisions.
func checkCommit(writes []ipam.Write, revs []ipam.Revision) error {
	if len(writes) == 0 || len(writes) > ipam.MaxCommitWrites {
		return fmt.Errorf("etcdstore: commit of %d writes: want 1 to %d", len(writes), ipam.MaxCommitWrites)
	}
	if len(revs) < len(writes) {
		return fmt.Errorf("etcdstore: commit of %d writes with room for %d revisions", len(writes), len(revs))
	}
	for i := range writes {
		w := &writes[i]
		if !validKind(w.Kind) {
			return fmt.Errorf("etcdstore: commit: write %d (%q) has invalid record kind %d", i, w.Key, uint8(w.Kind))
		}
		if w.Block != nil {
			return fmt.Errorf("etcdstore: commit: write %d (%s %q) carries a block, but the store is not an ipam.BlockKeeper", i, w.Kind, w.Key)
		}
		for j := range i {
			if writes[j].Kind == w.Kind && writes[j].Key == w.Key {
				return fmt.Errorf("etcdstore: commit: writes %d and %d both write %s %q", j, i, w.Kind, w.Key)
			}
		}
	}
	return nil
}
