// Package carve is IP address management for Go programs, on the model of
// Calico IPAM: IP pools are carved into fixed-size blocks, blocks are given to
// nodes (affinity), addresses inside a block are handed out from a bitmap,
// pools are chosen for a request by label selectors, and all state lives
// behind a small compare-and-swap storage interface, so the same engine runs
// in one process on an embedded store and across a cluster on etcd.
//
// The library is a set of packages, each usable on its own:
//
//   - [github.com/carve-ipam/carve/selector]: the Calico label-selector
//     language (parse, evaluate, canonical form).
//
// This package holds documentation only; import the packages above.
package carve
