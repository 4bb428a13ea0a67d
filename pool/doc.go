// Package pool is carve's model of Calico IP pools: the pool spec, its
// defaults and validation rules, decoding of IPPool manifests, a set of
// non-overlapping pools, the carving of a pool into blocks, the choice of
// pools for an assignment, and block-size capacity planning.
//
// # Pools
//
// A [Pool] is Calico's IPPool spec plus its name: a CIDR carved into blocks
// of BlockSize (a prefix length), the nodes (NodeSelector) and namespaces
// (NamespaceSelector) it serves, what its addresses are for (AllowedUses),
// whether it is chosen automatically or only by name (AssignmentMode),
// whether it takes new assignments (Disabled), and the network settings
// carve stores but does not act on (IPIPMode, VXLANMode, NATOutgoing,
// DisableBGPExport). Field and JSON names are Calico's, so the spec of an
// existing IPPool decodes as it is.
//
// Every zero field means Calico's default, which [Pool.WithDefaults] fills
// in: blockSize 26 for IPv4 and 122 for IPv6 (64 addresses a block),
// nodeSelector all(), allowedUses Workload and Tunnel, assignmentMode
// Automatic, ipipMode and vxlanMode Never. An empty namespaceSelector
// selects every namespace.
//
// # Validation
//
// [Pool.Validate] reports every problem of a pool at once, in one
// *[ValidationError] whose [FieldError] entries each name the pool, the
// field and the value:
//
//	pool "extra": cidr 10.0.0.1/24 is not masked
//
// Each entry wraps a kind (ErrCIDR, ErrBlockSize, ...) for errors.Is. The
// rules, in the order they are reported:
//
//  1. name is a DNS subdomain: 1 to 253 characters, dot-separated labels of
//     lowercase letters, digits and '-' that start and end with a letter or
//     digit (ErrName).
//  2. cidr is set, is not an IPv4-mapped IPv6 prefix, and is masked: no
//     host bits; an IPv6 cidr does not hold any of the IPv4-mapped range
//     ::ffff:0:0/96 (ErrCIDR).
//  3. cidr does not overlap the link-local ranges 169.254.0.0/16 and
//     fe80::/10 (ErrLinkLocal).
//  4. blockSize is 20..32 for IPv4, 116..128 for IPv6 (ErrBlockSize).
//  5. cidr holds at least one block (its prefix length is at most
//     blockSize), unless the pool is disabled (ErrBlockSize).
//  6. nodeSelector and namespaceSelector parse as Calico selectors and do
//     not use global() (ErrSelector).
//  7. allowedUses holds only Workload, Tunnel and LoadBalancer
//     (ErrAllowedUses).
//  8. A LoadBalancer pool allows nothing else, selects all nodes
//     (nodeSelector empty or all()), has IPIP and VXLAN off and does not set
//     disableBGPExport (ErrLoadBalancer).
//  9. ipipMode and vxlanMode are Never, Always or CrossSubnet; IPIP is not
//     used on IPv6; IPIP and VXLAN are not both on (ErrEncapsulation).
//  10. assignmentMode is Automatic or Manual (ErrAssignmentMode).
//
// [ValidateUpdate] adds the rules for replacing a pool: name, cidr and
// blockSize never change, and a LoadBalancer pool stays a LoadBalancer
// pool (ErrImmutable). A [Set] adds the rules that need the other pools: a
// name is used once (ErrExists), and a cidr overlaps no other pool,
// disabled pools included (ErrOverlap).
//
// [Pool.Split] divides a pool into 2, 4, 8, ... equal parts with the same
// settings, Calico's calicoctl ipam split: each part must hold a whole
// block, so every block of the pool lies in exactly one part (ErrSplit).
//
// # Manifests
//
// [DecodeManifest] reads IPPool manifests in JSON: IPPool documents of
// apiVersion projectcalico.org/v3 or crd.projectcalico.org/v1, IPPoolList
// and List documents, JSON arrays of them, or several documents one after
// another. Only metadata.name is read from the metadata. The spec is read
// by [Pool.UnmarshalJSON], which matches field names exactly and refuses
// fields the IPPool spec does not have, because a misspelt blockSize would
// otherwise silently become the default for the life of the pool. The
// package has no YAML dependency: convert YAML manifests to JSON first.
//
// # Sets
//
// A [Set] holds pools with unique names and disjoint CIDRs. [Set.Add] and
// [Set.Update] apply defaults, validate, parse the selectors once and keep
// them with the pool. [Set.All] lists pools by name, Calico's order;
// [Set.ByAddr] finds the pool of an address by binary search. [Set.IPSet],
// [Set.Free] and [Set.FindFree] do set arithmetic with go4.org/netipx, for
// example to find room for a new pool. Reads are safe for concurrent use
// when nobody writes.
//
// # Selection
//
// [Set.Select] chooses the pools an assignment may use, in order, with
// Calico's rules. A [Request] that names pools (Calico's
// cni.projectcalico.org/ipv4pools annotation on a namespace or pod) gets
// exactly those, in its order: they bypass the selectors and Manual mode,
// but each must exist, be enabled and be of the request's family, or the
// request fails; pools that do not allow the request's use are dropped.
// Otherwise every pool is a candidate, by name, and qualifies when it is of
// the request's family, enabled, Automatic, its nodeSelector matches the
// node's labels, its namespaceSelector matches the namespace's labels (nil
// labels count as an empty set, as in Calico: `!has(team)` matches them,
// `team == "a"` does not), and it allows the use (Workload by default).
// When nothing qualifies, the *[NoPoolError] says for each pool why:
//
//	no pool for node node-3 (IPv4, Workload): pool extra: nodeSelector rack == "1" does not match node node-3 (labels rack=3)
//
// # Carving and the walk
//
// A pool of prefix length p and block size b has 2^(b-p) blocks, counted
// from 0 at the start of its CIDR: [Pool.NumBlocks], [Pool.BlockAt],
// [Pool.BlockIndex] and [Pool.BlockFor] (the block holding an address,
// without allocating) convert between blocks, indexes and addresses with
// 128-bit arithmetic. [Pool.Walk] gives every block once in a node's
// order: from a start derived from a hash of the node name, upwards,
// wrapping to the first block. It never lists the pool, and it jumps over
// runs of blocks to skip in one step, so a /48 of /122 blocks (2^74 of
// them) is as quick to walk as a /24.
//
// # Capacity planning
//
// [Plan] applies the block-size rule of the Calico documentation to a pool,
// a node count and pods per node: every node needs a block, so
// 2^(blockSize - prefix length) must be at least the number of nodes, and a
// node whose pods outnumber a block's addresses needs several blocks. It
// reports blocks, addresses per block, blocks per node and nodes served,
// warns when nodes go without, lists every allowed block size and suggests
// one: the smallest block that holds a node's pods, if the pool has enough
// of them.
//
// # Where carve differs from Calico
//
//   - Unknown or misspelt spec fields are errors, and field names are
//     case-sensitive; Calico's own decoding depends on the client.
//   - awsSubnetID (pools backed by an AWS subnet) is not supported: a
//     manifest that sets it is refused, with an error saying so.
//   - IPv4-mapped IPv6 CIDRs (::ffff:a.b.c.d/n) are refused, and so are
//     IPv6 CIDRs that hold the IPv4-mapped range (::/64, ::/1, ...): carve
//     treats an IPv4-mapped address as the IPv4 address it maps.
//   - A LoadBalancer pool's nodeSelector must mean all() (canonical form),
//     not be the exact text "all()".
//   - Requests name pools by name or by CIDR; Calico's IPAM takes only
//     CIDRs (its CNI plugin converts names). Duplicate names in a request
//     count once.
//   - The walk's start is a 128-bit hash of the node name rather than a
//     math/rand draw seeded by a 32-bit one, and it is deterministic for
//     every block size (Calico seeds from the clock for /32 and /128
//     blocks); skipped blocks are jumped over instead of probed.
//   - All problems of a pool come in one error, overlaps with every pool
//     overlapped included; Calico stops at some problems (an unparsable
//     CIDR) and reports the rest in separate passes.
//   - Calico refuses a new pool whose range holds blocks of another block
//     size; that needs the blocks, so it is left to the allocator engine.
package pool
