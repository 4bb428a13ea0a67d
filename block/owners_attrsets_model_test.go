package block_test

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/block"
)

// TestManyAttributeSetsModel: handles that own addresses under more
// attribute sets than find compares by map (so that lookups go by the hash
// of the encoding), through allocations with reused, copied and empty maps,
// releases, releases by handle, Mirror between two versions, CopyTo and
// both decoders. After every step the block is consistent (Verify: no
// stale encoding hash, no duplicate record), holds exactly what the model
// says, and reports one owner per distinct handle and attribute set.
func TestManyAttributeSetsModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := netip.MustParsePrefix(rapid.SampledFrom([]string{"10.0.0.0/26", "10.0.0.0/28", "fd00::/122"}).Draw(t, "prefix"))
		b, err := block.New(p)
		if err != nil {
			t.Fatal(err)
		}
		twin := new(block.Block)
		b.Mirror(twin)
		const sets = 10
		shared := make([]map[string]string, sets)
		for i := range shared {
			if i > 0 {
				shared[i] = map[string]string{"purpose": "fixed", "i": fmt.Sprint(i)}
			}
		}
		handles := []string{"static", "other"}
		type owner struct {
			handle string
			attrs  map[string]string
		}
		model := map[netip.Addr]owner{}
		key := func(o owner) string {
			return fmt.Sprintf("%q %v", o.handle, o.attrs) // fmt sorts map keys
		}
		check := func(what string) {
			if err := b.Verify(); err != nil {
				t.Fatalf("after %s: %v", what, err)
			}
			got := map[netip.Addr]owner{}
			for a, al := range b.All() {
				got[a] = owner{al.Owner.Handle, al.Owner.Attrs}
			}
			if len(got) != len(model) {
				t.Fatalf("after %s: %d addresses, model %d", what, len(got), len(model))
			}
			want := map[string]int{}
			for a, o := range model {
				g, ok := got[a]
				if !ok || key(g) != key(o) {
					t.Fatalf("after %s: %s owned by %v, model %v", what, a, g, o)
				}
				want[key(o)]++
			}
			owners := map[string]int{}
			for o, n := range b.Owners() {
				k := key(owner{o.Handle, o.Attrs})
				if _, dup := owners[k]; dup {
					t.Fatalf("after %s: owner %s listed twice", what, k)
				}
				owners[k] = n
			}
			if !maps.Equal(owners, want) {
				t.Fatalf("after %s: owners %v, model %v", what, owners, want)
			}
		}
		steps := rapid.IntRange(1, 200).Draw(t, "steps")
		for range steps {
			switch op := rapid.IntRange(0, 9).Draw(t, "op"); {
			case op <= 4:
				h := rapid.SampledFrom(handles).Draw(t, "handle")
				a := shared[rapid.IntRange(0, sets-1).Draw(t, "set")]
				switch rapid.IntRange(0, 2).Draw(t, "copy") {
				case 1:
					a = maps.Clone(a)
				case 2:
					if a == nil {
						a = map[string]string{}
					}
				}
				n := rapid.IntRange(1, 3).Draw(t, "n")
				got, _ := b.Allocate(nil, n, block.Owner{Handle: h, Attrs: a})
				for _, x := range got {
					model[x] = owner{h, a}
				}
				check("allocate")
			case op <= 6:
				if len(model) == 0 {
					continue
				}
				var addrs []netip.Addr
				for x := range model {
					addrs = append(addrs, x)
				}
				slices.SortFunc(addrs, netip.Addr.Compare)
				x := addrs[rapid.IntRange(0, len(addrs)-1).Draw(t, "which")]
				if err := b.Release(x, block.Check{}); err != nil {
					t.Fatal(err)
				}
				delete(model, x)
				check("release")
			case op == 7:
				h := rapid.SampledFrom(handles).Draw(t, "handle")
				got := b.ReleaseHandle(h, nil)
				n := 0
				for x, o := range model {
					if o.handle == h {
						delete(model, x)
						n++
					}
				}
				if len(got) != n {
					t.Fatalf("ReleaseHandle(%q) released %d, model %d", h, len(got), n)
				}
				check("release by handle")
			case op == 8:
				// An allocator's step: the next version in the twin,
				// mirrored, and the roles swapped.
				b.Mirror(twin)
				b, twin = twin, b
				check("mirror")
			default:
				switch rapid.IntRange(0, 2).Draw(t, "decode") {
				case 0:
					data, err := b.MarshalBinary()
					if err != nil {
						t.Fatal(err)
					}
					if err := b.UnmarshalBinary(data); err != nil {
						t.Fatal(err)
					}
					check("binary round trip")
				case 1:
					data, err := b.MarshalJSON()
					if err != nil {
						t.Fatal(err)
					}
					if err := b.UnmarshalJSON(data); err != nil {
						t.Fatal(err)
					}
					check("JSON round trip")
				default:
					c := new(block.Block)
					b.CopyTo(c)
					b = c
					check("copy")
				}
				b.Mirror(twin)
			}
		}
	})
}
