// Package ipam is carve's allocator engine: Calico IPAM as a library.
//
// An [Allocator] hands out addresses from IP pools ([pool.Pool]) kept in a
// [Store]. Pools are carved into blocks ([block.Block]); a node claims
// blocks (affinity) and assigns addresses from them, so that each node's
// addresses aggregate into a few routes. The store is a small
// compare-and-swap key-value contract:
// [github.com/carve-ipam/carve/ipam/memstore] keeps everything in one
// process, and any datastore with per-record revisions can be a backend,
// proven by
// [github.com/carve-ipam/carve/ipam/storetest.RunConformanceTests].
//
// # Assigning
//
// [Allocator.AutoAssign] chooses addresses as Calico does:
//
//  1. Pools: those named in the request, or else every enabled Automatic
//     pool whose nodeSelector and namespaceSelector match and which allows
//     the use, in name order (see [pool.Set.Select]). The node's labels
//     come with the request, or else from [Allocator.SetNodeLabels], which
//     stores them as Calico's node resource holds them.
//  2. Blocks affine to the node, in pool order.
//  3. New blocks claimed for the node (when [Config].AutoAllocateBlocks),
//     along a walk of the pool that starts at a place derived from the node
//     name, up to [Config].MaxBlocksPerHost blocks. When a pool has no
//     unclaimed block left, an empty block of another node claimed
//     [Options].ReclaimAge ago or more is taken over.
//  4. Unless [Config].StrictAffinity, addresses borrowed from other nodes'
//     blocks.
//
// A request for both IPv4 and IPv6 addresses is all-or-nothing unless it
// sets Partial; failures are an [*AssignError] saying what was short and
// why. [Allocator.AssignIP] assigns one given address, and
// [Allocator.AssignIPs] several under one handle, all or none (a pod's
// fixed IPv4 and IPv6 addresses). [Allocator.EnsureBlock] gives a node
// its block of each family asked for before its first address: its first
// block in the pools of step 1, as in step 2, or else one claimed as in
// step 3 (Calico's EnsureBlock).
//
// LoadBalancer addresses (use [pool.UseLoadBalancer], from LoadBalancer
// pools only) belong to no node: a request for them names none, and their
// blocks are affine to the virtual owner [VirtualLoadBalancer]
// ("virtual:load-balancer", as in Calico), which goes through the same
// steps but without MaxBlocksPerHost. Node removal and the Collector's
// node oracle leave its blocks alone. A workload pool that
// [Allocator.UpdatePool] turns into a LoadBalancer pool keeps the nodes'
// blocks until they empty. LoadBalancer ranges are often
// smaller than the default /26 block: such a pool needs a BlockSize of its
// own (a /28 pool, 28 or more). As everywhere, every address of a block is
// assignable, the first and last of the range too; a [Reservation] keeps
// out those that must not be handed out.
//
// Every assignment records a handle (the owner: a pod, a VM interface), the
// node (but for LoadBalancer addresses) and optional attributes, and the
// block's sequence number. Release by
// address with [Allocator.ReleaseIPs] (optionally checking the handle and
// the sequence number, so that a late release never frees a reassigned
// address), or everything of a handle with [Allocator.ReleaseByHandle].
//
// A request that may be sent again (a CNI ADD retried, a controller
// reconciling after a failed status update) sets NewHandle: it assigns
// only if its handle holds nothing, and otherwise fails with
// [ErrHandleExists]; [Allocator.AssignedByHandle] then returns what the
// first request got, as an [AutoAssignResult] in address order. Of
// requests racing under one handle at most one assigns, on any number of
// allocators: the handle's record is created by a request's first write.
// A request still in flight, or cut short, shows only as far as it got:
// compare the answer with what was asked (examples/cni does).
//
// # Keeping addresses apart
//
// A [Reservation] keeps CIDRs out of automatic assignment (Calico's
// IPReservation). [Config].ReleaseCooldown keeps a released address from
// being assigned again for a while, so that a new owner never gets an
// address its previous owner may still be using; [Allocator.AssignIP]
// refuses such an address too, unless [AssignIPArgs].IgnoreCooldown says
// that the workload gets its own fixed address back. [Allocator.Utilization]
// counts reserved and cooling addresses apart from free ones.
//
// # Trust under faults
//
// [Allocator.Check] reads the whole store and reports every inconsistency
// of carve's records in a machine-readable [Report] (leaks, addresses of
// workloads that are gone, are the Collector's: see below);
// [Allocator.Repair] fixes what is safe to fix and says what it did; with
// a settle time ([RepairOptions]) it may run while allocators work, where
// Calico asks for the datastore to be locked. A
// [Collector] finds and releases leaked addresses, as Calico's
// kube-controllers garbage collector does: a liveness oracle, a grace
// period, all-or-none per handle, a re-check before release, and release
// by sequence number; given a node oracle ([CollectorOptions].Nodes), it
// also releases the blocks of nodes that are gone. Each pass lists the
// suspects it waits on; with [CollectorOptions].DryRun it reports what it
// would release and writes nothing (Calico's ipam check
// --show-problem-ips), and [Allocation.Release] then releases a listed
// address by hand only if it is still the same assignment.
// [github.com/carve-ipam/carve/ipam/storetest.FaultyStore]
// fails or crashes a store at a chosen operation; carve's tests crash a
// workload at every one of its operations and show that Check then finds
// only what Repair fixes.
//
// # Where carve differs from Calico
//
//   - Handle counts are exact; Calico raises them by the count requested.
//   - Reaching MaxBlocksPerHost stops claims only: without StrictAffinity
//     the node goes on to borrow (Calico fails). So MaxBlocksPerHost does
//     not require StrictAffinity, and 0 means no cap.
//   - Finding a block to claim never lists the store's blocks while the
//     pool has room: a /48 IPv6 pool (2^74 blocks) claims as fast as a /24.
//     Borrowing lists the blocks of one pool, not every block.
//   - A steady-state AutoAssign costs two store round trips (the handle and
//     the block), and one with a store that writes several records at
//     once ([Committer]: memstore and the etcd backend do); Calico needs
//     about nine. Its ReleaseByHandle costs three, or two; on the etcd
//     backend (Committer, and records in another process), made by the
//     allocator that assigned, one: the allocator remembers the handle
//     records it wrote, and the release's commit checks them. (These are
//     with [Generations], which memstore and the etcd backend offer too;
//     without it every call first reads what it would have cached: see
//     Generations. A dual-stack request makes a commit per family, and
//     its release one commit for both.)
//   - Releases are checked per address: one stale release is refused
//     without holding back the others.
//   - Repair can run on a store in use (with a settle time); Calico's
//     release of a check's leaks needs the datastore locked.
//   - The pool set is one record, so two processes creating overlapping
//     pools at once cannot both succeed, and a pool cannot be created over
//     leftover blocks of a different size. For the same reason
//     [Allocator.SplitPool] (calicoctl ipam split) is one write, with no
//     datastore lock. Each pool still has a version of its own
//     ([pool.Pool].Version, as Calico's resourceVersion):
//     [Allocator.UpdatePool] is conditional on the version read, and a
//     change to one pool does not refuse updates made from a read of
//     another.
//   - A failed AutoAssign leaves nothing behind: no address, no handle, no
//     claimed block, also when it failed because its context ended: a
//     pair of writes begun is finished, and a failed request undone, on
//     a context of the operation's own (ctx's values, a 10-second limit),
//     so a caller that gives up midway waits for that, and leaves no half
//     made write for Repair. A block write whose outcome is unknown (a
//     timeout, a context that ended during it) is settled by a read of
//     the block: the assignment stands if it shows the write; if not, a
//     write of the block at the revision the lost one expected fences it
//     off. Only when the store can be neither read nor written then may a
//     handle count stay too high, which ReleaseByHandle reports as
//     ErrHandleNotFound, Check reports and Repair removes; never an
//     address without its count.
//   - A request can be made safe to repeat (NewHandle); Calico assigns
//     again under a handle that holds addresses.
//   - Several given addresses are assigned all or none (AssignIPs);
//     Calico's CNI plugin assigns a pod's ipAddrs one at a time and keeps
//     the first when the second fails.
//   - A reservation made while an AutoAssign is in flight holds for it:
//     the request looks again after its writes and replaces what the new
//     reservation covers.
//   - Release times outlive a block's affinity: an empty block whose
//     addresses still cool is kept, without affinity, rather than deleted,
//     so removing a node does not end the cooldown.
//   - The consistency check, its repair and the leak collector are library
//     functions, not separate programs.
//
// # Concurrency and crash safety
//
// An Allocator is safe for concurrent use, and any number of allocators may
// share a store. Every write is a compare-and-swap, retried a bounded
// number of times ([Options].MaxRetries) on a fresh copy of the record.
// Writes are ordered so that a crash at any point leaves, at worst, a
// handle count too high, a stale affinity index entry (its block gone,
// or no longer the owner's: Check's affinity-stale), or empty blocks
// without a pool (a claim in a pool being deleted, a pool deletion cut
// short: Repair deletes them, and DeletePool called again finishes);
// never an address owned twice. With a store that offers [Committer]
// (memstore and the etcd backend do), an assignment's handle count and
// block, and a release's blocks and handle count (ReleaseByHandle of a
// handle in at most seven blocks, and ReleaseIPs of one handle's addresses
// there, each retried as one commit when another writer got there first),
// are written in one commit, so no crash leaves a count too high there. (One crash more: a claim that dies just
// after creating its block, while another allocator releases the same
// owner's blocks, can leave the block out of the owner's index until
// Repair puts it back; Check reports it as affinity-unindexed.)
// docs/ARCHITECTURE.md in the repository describes the order in full.
//
// The allocator caches pools, configuration, node affinities and blocks.
// With a store that offers [Generations] (memstore does), pool and
// configuration changes made by any allocator are seen on the next call.
// Cached blocks are only used to attempt a compare-and-swap; any refusal is
// confirmed by a fresh read. With a store that offers [BlockKeeper]
// (memstore does), blocks are handed over as they are and encoded only
// when read, which takes encoding off the allocation path.
package ipam
