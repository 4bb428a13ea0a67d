package storetest

import (
	"context"

	"github.com/carve-ipam/carve/ipam"
)

// commitTo passes a commit to c, the Committer of s, as the test wrappers
// offer it: with the blocks of writes that carry one encoded when s is not
// a BlockKeeper, as putBlock does for single writes.
func commitTo(ctx context.Context, s ipam.Store, c ipam.Committer, writes []ipam.Write, revs []ipam.Revision) error {
	if _, ok := s.(ipam.BlockKeeper); ok {
		return c.Commit(ctx, writes, revs)
	}
	var enc []ipam.Write
	for i, w := range writes {
		if w.Block == nil {
			continue
		}
		if enc == nil {
			enc = append([]ipam.Write(nil), writes...)
		}
		v, err := w.Block.MarshalBinary()
		if err != nil {
			return err
		}
		enc[i].Value, enc[i].Block = v, nil
	}
	if enc != nil {
		writes = enc
	}
	return c.Commit(ctx, writes, revs)
}

// WithoutBlockKeeper returns s without [ipam.BlockKeeper], keeping its
// [ipam.Generations] and [ipam.Committer] where it has them: for example
// WithoutBlockKeeper(f.WithCommits()) for a FaultyStore f. An allocator
// then takes the store for one in another process, as etcdstore's: it
// writes every block as its encoding, decodes every block it reads, and
// keeps its memo of the handle records it writes. The wrapped store need
// not be a BlockKeeper itself; the returned one never is.
func WithoutBlockKeeper(s ipam.Store) ipam.Store {
	g, gens := s.(ipam.Generations)
	cm, commits := s.(ipam.Committer)
	switch {
	case gens && commits:
		return bytesGensCommit{s, g, cm}
	case gens:
		return bytesGens{s, g}
	case commits:
		return bytesCommit{s, cm}
	}
	return bytesStore{s}
}

// bytesStore and its variants offer a store's methods and named
// capabilities only: the fields embed interfaces, whose methods are all
// that the structs promote.
type bytesStore struct{ ipam.Store }

type bytesGens struct {
	ipam.Store
	ipam.Generations
}

type bytesCommit struct {
	ipam.Store
	ipam.Committer
}

type bytesGensCommit struct {
	ipam.Store
	ipam.Generations
	ipam.Committer
}
