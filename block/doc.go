// Package block is one block of an IP pool: a fixed-size range of addresses
// handed out from a bitmap, the unit a store writes.
//
// # Blocks
//
// A block is a masked prefix of /20 to /32 (IPv4) or /116 to /128 (IPv6), so
// it holds 1 to [MaxSize] (4,096) addresses; a /26 holds 64. Every address is
// assignable, the first and the last included, unless the caller reserves
// it. A block may belong to a node ([Host]) or a virtual owner such as a
// load balancer ([Virtual]), recorded with the time it was claimed.
//
// A Block is pure data with methods: no I/O, and not safe for concurrent
// use while it changes (concurrent reads are fine). The caller owns a block
// while it changes it; the allocator engine copies a block into a scratch
// block ([Block.Mirror], which copies only what changed since the two were
// last equal), changes the copy and writes it with a compare-and-swap. The
// zero Block is invalid (see [Block]); [New] makes one.
//
// # Allocation order
//
// [Block.Allocate] hands out addresses next-fit from a rotating cursor: the
// search starts just past the last address it handed out and wraps around
// the end of the block. An address released behind the cursor is handed out
// again only after the free addresses from the cursor to the end of the
// block, so reuse is delayed much as by Calico's FIFO of unallocated
// ordinals, without storing a queue; unlike the FIFO, addresses behind the
// cursor come back in address order, not in the order they were released.
// The search is word-level: a /26 is one 64-bit word, a /20 64 words.
// [Block.Assign] takes one specific address and leaves the cursor alone.
//
// # Owners
//
// Every allocated address points to an owner record {handle, attributes}.
// Addresses of the same owner (equal handle, equal attributes) share one
// record; a record is dropped when its last address is released. The block
// keeps the attribute map of the owner that creates a record and never
// modifies it; callers must not modify it either. [Block.ReleaseHandle] and
// [Block.AddrsOf] act on a handle whatever its attributes.
//
// # Sequence numbers
//
// The block has a counter that moves on every change (an allocation, a
// release, a reservation, an affinity), once per call. It starts at the wall
// clock in nanoseconds, so a block deleted and created again does not repeat
// the numbers of its earlier life. Each allocation records the value the
// counter moved to. A release may carry the owner handle and the sequence
// number the caller saw at allocation ([Check]); a mismatch is refused and
// nothing changes, so a stale release never frees an address that has since
// been handed out again.
//
// # Reservations
//
// [Block.Reserve] marks a free address unusable (Windows nodes, for example,
// need the first three and the last address of every block): it is neither
// allocated nor free, and Allocate and Assign skip it. Size = Used + Free +
// Reserved at all times; [Block.Empty] ignores reserved addresses.
//
// # Release times: cooldown and excluded addresses
//
// [Block.ReleaseAt] and [Block.ReleaseHandleAt] release as Release and
// ReleaseHandle do and also record when each address was released.
// [Block.AllocateWith] allocates like Allocate but passes over addresses
// released at or after a cutoff (a release cooldown: the address is not
// handed to a new owner while the old one may still use it) and addresses a
// predicate excludes (addresses reserved outside the block). Taking an
// address forgets its release time; [Block.PruneReleased] forgets times a
// cooldown no longer needs, and [Block.CoolingSince] counts the addresses a
// cutoff holds back.
//
// # Binary encoding
//
// [Block.MarshalBinary] writes a compact, canonical encoding (Equal blocks
// encode to the same bytes). Integers marked uvarint are unsigned LEB128
// varints as written by encoding/binary and must be minimal; a string is a
// uvarint length and its bytes. Version 1:
//
//	version       1 byte, 1
//	family        1 byte, 4 or 6
//	bits          1 byte, the prefix length
//	address       4 or 16 bytes, the masked prefix address
//	counter       8 bytes, big-endian
//	cursor        uvarint, below the block size
//	affinity      1 byte kind (0 none, 1 host, 2 virtual), then the name
//	              as a string unless the kind is 0
//	claim time    1 byte 0 for none, or 1 followed by the Unix seconds
//	              (uvarint, zigzag) and nanoseconds (uvarint); years 1-9999
//	reserved      uvarint count, then per reserved address in ascending
//	              order the uvarint gap from the previous one (the first:
//	              its offset in the block)
//	allocations   uvarint count, then per allocated address in ascending
//	              order: the uvarint gap as above; the uvarint counter minus
//	              the recorded sequence number (modulo 2^64, so usually one
//	              byte); the uvarint owner index. Owners are numbered in
//	              order of first use: an index equal to the number of owners
//	              seen so far introduces a new owner, written right after it
//	              as the handle string, a uvarint attribute count and the
//	              key and value strings in ascending key order.
//
// Version 2 is version 1 with the version byte 2 and, after the
// allocations, the release times: a uvarint count (at least 1), then per
// free address with a release time, in ascending order, the uvarint gap as
// above and the time in Unix nanoseconds as a zigzag uvarint difference
// from the previous time (the first from 0). A block without release times
// is always written as version 1, so each block has one encoding.
//
// A /26 with 64 addresses of distinct 20-byte handles encodes to about 1.6
// KB; one handle holding all 64 takes about 240 bytes.
//
// [Block.UnmarshalBinary] accepts exactly that language and rejects anything
// else with [ErrCorrupt]: an unknown version, a prefix that is not masked or
// of a disallowed size, counts that exceed the block or the data, addresses
// past the end or reserved and allocated at once, an owner index out of
// range, an owner written twice, keys out of order, non-minimal varints,
// trailing bytes, release times on taken addresses or outside 1970 to 2261
// (UTC). It never panics.
//
// # JSON
//
// [Block.MarshalJSON] writes a readable form with the same content, for
// debugging and for stores that want text:
//
//	{"version":1,"cidr":"10.0.0.0/26","seq":1700000000000000003,"cursor":2,
//	 "affinity":"host:node-1","claimTime":"2025-01-02T03:04:05Z",
//	 "reserved":["10.0.0.63"],
//	 "owners":[{"handle":"pod-a","attrs":{"namespace":"default"}}],
//	 "allocations":[{"addr":"10.0.0.0","owner":0,"seq":1700000000000000002},
//	                {"addr":"10.0.0.1","owner":0,"seq":1700000000000000002}],
//	 "released":[{"addr":"10.0.0.5","at":"2025-01-02T03:04:06Z"}]}
//
// [Block.UnmarshalJSON] validates as strictly, except that lists may come in
// any order; unknown fields, field names in another letter case and a field
// or attribute key given twice are refused.
package block
