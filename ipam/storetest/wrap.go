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
