// Package carve is IP address management for Go programs, on the model of
// Calico IPAM: IP pools are carved into fixed-size blocks, blocks are given to
// nodes (affinity), addresses inside a block are handed out from a bitmap,
// pools are chosen for a request by label selectors, and all state lives
// behind a small compare-and-swap storage interface, so the same engine runs
// in one process on an embedded store and across a cluster on a shared one.
//
// The library is a set of packages, each usable on its own:
//
//   - [github.com/carve-ipam/carve/ipam]: the allocator engine (AutoAssign,
//     AssignIP, releases, affinities, pools, utilization) and the Store
//     interface a backend implements.
//   - [github.com/carve-ipam/carve/ipam/memstore]: the embedded default store.
//   - [github.com/carve-ipam/carve/ipam/storetest]: the conformance suite a
//     Store backend runs, a store wrapper that counts round trips, and one
//     that fails or crashes at a chosen operation.
//   - github.com/carve-ipam/carve/ipam/etcdstore (its own module): the
//     Store on etcd, for clusters.
//   - [github.com/carve-ipam/carve/pool]: the IP pool spec (Calico's IPPool),
//     validation, overlap, carving into blocks, selection for a request and
//     capacity planning.
//   - [github.com/carve-ipam/carve/block]: one block: bitmap allocation,
//     owners, sequence numbers, reservations and its encoding.
//   - [github.com/carve-ipam/carve/selector]: the Calico label-selector
//     language.
//
// Start with the ipam package's example, or run the quickstart:
//
//	go run ./examples/quickstart
//
// This package holds documentation only.
package carve
