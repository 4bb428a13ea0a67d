// Package etcdstore is an [ipam.Store] on etcd v3, the datastore Calico
// itself uses, so that allocators in many processes on many machines share
// one cluster-wide state.
//
//	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://127.0.0.1:2379"}})
//	...
//	s, err := etcdstore.New(ctx, cli, etcdstore.Options{RequestTimeout: 5 * time.Second})
//	...
//	defer s.Close()
//	a, err := ipam.New(s, ipam.Options{})
//
// It is a module of its own (github.com/carve-ipam/carve/ipam/etcdstore), so
// that programs using carve without etcd never depend on the etcd client.
//
// # Keys
//
// A record of kind k under key x lives at the etcd key
//
//	<prefix><k>/<x>          for example /carve/block/v4:0af40040/26
//
// with kinds spelled as [ipam.Kind.String] gives them ("pool", "block",
// "affinity", "handle", "config", "reservation", "node") and the value
// stored as is. The prefix (Options.Prefix, default "/carve/") ends with
// "/"; stores with the same prefix share their records, and two
// installations need prefixes of which neither starts with the other. A
// List is one etcd range request, from <prefix><k>/<start> to
// <prefix><k>/<end>, or to the end of the kind's keys when the range has
// no end, so its records come from one consistent snapshot.
//
// # Revisions and writes
//
// A record's revision is its etcd mod revision. etcd numbers every change
// of the whole keyspace, so a key's revisions never repeat, even across a
// delete and a re-create, as the Store contract demands. Create, Update and
// Delete are each a transaction on one key: Create puts only if the key's
// create revision is 0 (it does not exist), Update and Delete only if its
// mod revision is the one given; when the comparison fails, a key-only
// read in the same transaction tells ErrNotFound from ErrConflict. Reads
// are linearizable (etcd's default), so a fresh read always sees the last
// write.
//
// Store is an [ipam.Committer] too: a Commit is one transaction, so one
// round trip, that makes all of its writes, with the comparisons of the
// single writes, or none. Its puts share the transaction's revision. When
// a comparison fails, key-only reads of every record in the same
// transaction tell which write was refused, and why. A commit of
// [ipam.MaxCommitWrites] writes stays far below etcd's limit on a
// transaction's comparisons and operations (--max-txn-ops, 128 by
// default). Store is not an [ipam.BlockKeeper], so it refuses a Write
// that carries a block.
//
// etcd refuses requests larger than its --max-request-bytes (1.5 MiB by
// default). A carve record is far smaller unless a block holds thousands of
// owners with large attributes.
//
// # Generations and their lag
//
// Store implements [ipam.Generations] with a watch of each kind an
// allocator caches (pools, configuration, reservations, affinities and
// node labels), which New starts just after etcd's current revision, so
// that no later change is missed. A kind's generation moves when a write
// through the same Store returns (whatever its outcome) and when the watch
// delivers a change of the kind, by anyone. Blocks and handles, which every
// assignment in the cluster writes and no allocator keeps by generation,
// are not watched, so that a process does not receive every block written
// in the cluster; their generations change on every call. Allocators therefore see their own process's pool,
// configuration and node label changes at once, and those of other
// processes after the watch delivers them: a few milliseconds on a
// healthy cluster, more under load, and as long as the client is cut off
// from etcd. This is the lag Calico's own watch-based components have. It
// is safe: an allocator
// with an old pool set may assign from a pool another process has just
// disabled or is deleting (as Calico may), but block writes are
// compare-and-swap on the record's revision, so no address is ever handed
// out twice. The allocator's checks that pools changed under a request
// do not trust a generation: a request that assigned in a block it read
// from etcd reads the pools after its writes unless that block was
// checked against them since it was read.
//
// When a watch is cancelled (a compaction past the revisions it still has
// to deliver, the member losing its leader, a closed client) its kind's
// generation moves, the watch resumes where it stopped (after a
// compaction, at the oldest revision etcd still has), and until it is back
// every call to Generation for the kind returns a new number, so that
// allocators re-read rather than trust their caches. The same holds for
// every kind after Close.
//
// A watch stays on the member it started on. A client with several
// endpoints should set clientv3.Config's DialKeepAliveTime and
// DialKeepAliveTimeout, so that a member that hangs while it still has a
// leader is left for another instead of holding the watches still.
//
// # Restoring etcd from a backup
//
// A plain restore of an etcd snapshot starts the revision counter again
// from the snapshot's revision, so a key can be given a revision it had
// before with other contents. That breaks the Store contract (a key's
// revisions never repeat) for allocators that kept running: they cache
// blocks, block summaries and node labels by revision. Stop the
// allocators before a restore and start them afresh after it, or restore
// with a revision bump larger than the writes since the snapshot (etcd's
// etcdutl snapshot restore --bump-revision with --mark-compacted), which
// keeps revisions increasing. Then run ipam's Repair: what was assigned
// after the snapshot is gone from the store.
//
// # Contexts and timeouts
//
// Every method honours its context: one already done when the call starts
// sends nothing to etcd, and one that ends during the call gives an error
// matching its Err (context.Canceled or context.DeadlineExceeded), after
// which a write may or may not have happened. The etcd client waits for a
// reachable member rather than failing at once; Options.RequestTimeout
// bounds every request so that a call cannot hang while etcd is away, and
// an expired request gives an error matching context.DeadlineExceeded.
//
// Errors name the operation and the key, as in
// `etcdstore: update block "v4:0af40040/26" at revision 41 (now 57): revision conflict`,
// and match the ipam sentinels (ErrNotFound, ErrExists, ErrConflict) with
// errors.Is.
//
// # Tests
//
// The tests start an etcd member inside the test binary (loopback, ports
// chosen by the kernel, a temporary data directory, 10ms raft ticks), give
// each test its own prefix, and run the whole conformance suite
// (storetest.RunConformanceTests). Multi-process tests run the test binary
// again as child processes, each with its own client and allocator, and
// kill one with SIGKILL mid-run to check that only repairable leftovers
// remain. Run them, under the race detector, with
//
//	cd ipam/etcdstore && go test -race ./...
//
// and the benchmarks with
//
//	cd ipam/etcdstore && go test -run '^$' -bench . -count 5
package etcdstore
