package block

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestVerifyCatches checks the consistency check the model and fuzz tests
// rely on does fail: each corruption of a sound block is reported.
func TestVerifyCatches(t *testing.T) {
	sound := func() *Block {
		b, err := NewWithSeq(netip.MustParsePrefix("10.0.0.0/28"), 5)
		if err != nil {
			t.Fatal(err)
		}
		b.Allocate(nil, 3, Owner{Handle: "a"})
		b.Allocate(nil, 2, Owner{Handle: "b", Attrs: map[string]string{"k": "v"}})
		b.Allocate(nil, 1, Owner{Handle: "c"})
		if err := b.Release(b.addr(5), Check{}); err != nil { // c's record becomes the spare
			t.Fatal(err)
		}
		if err := b.Reserve(b.addr(15)); err != nil {
			t.Fatal(err)
		}
		b.SetAffinity(Host("n"), time.Now())
		if err := b.verify(); err != nil {
			t.Fatalf("sound block: %v", err)
		}
		return b
	}
	tests := []struct {
		name    string
		corrupt func(b *Block)
		want    string
	}{
		{"used count", func(b *Block) { b.used++ }, "counted 5 used"},
		{"reserved count", func(b *Block) { b.nres = 0 }, "reserved, fields say"},
		{"cursor", func(b *Block) { b.cursor = 16 }, "cursor 16"},
		{"size", func(b *Block) { b.size = 32 }, "size 32"},
		{"padding", func(b *Block) { b.taken.Words()[0] &^= 1 << 63 }, "padding"},
		{"reserved not taken", func(b *Block) { b.taken.Words()[0] &^= 1 << 15 }, "reserved bits not taken"},
		{"refs", func(b *Block) { b.recs.recs[b.owner[0]].refs++ }, "refs"},
		{"owner slot", func(b *Block) { b.owner[0] = 99 }, "out of range"},
		{"live count", func(b *Block) { b.recs.live++ }, "live"},
		{"hash", func(b *Block) { b.recs.recs[0].hash++ }, "stale hash"},
		{"encoding hash", func(b *Block) { b.recs.recs[1].ahash++ }, "stale encoding hash"},
		{"index lost", func(b *Block) { clear(b.recs.index) }, "index finds -1"},
		{"duplicate owner", func(b *Block) {
			// Point one of a's addresses at a second record equal to a's.
			s, _ := b.recs.addUnique("x", nil, appendOwner(nil, "a", nil))
			b.recs.recs[s].handle = "a"
			b.recs.recs[s].refs = 1
			b.recs.recs[s].hash = b.recs.recs[b.owner[0]].hash
			b.recs.recs[b.owner[0]].refs--
			b.owner[0] = uint16(s)
			b.recs.live++
		}, "index finds"},
		{"spare with addresses", func(b *Block) { b.recs.spare = b.owner[0] + 1 }, "spare"},
		{"free slot in use", func(b *Block) { b.recs.free = append(b.recs.free, b.owner[0]) }, "not cleared"},
		{"affinity", func(b *Block) { b.aff = Affinity{Kind: 7} }, "invalid affinity"},
		{"claim zone", func(b *Block) { b.claim = time.Now().In(time.FixedZone("X", 60)) }, "not in UTC"},
		{"zero with state", func(b *Block) { b.reset(); b.seq = 1 }, "zero block with state"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := sound()
			tt.corrupt(b)
			err := b.verify()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("verify = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
