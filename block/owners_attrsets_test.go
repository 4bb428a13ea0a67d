package block

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// TestOneHandleManyAttributeSets: one handle that owns addresses under many
// attribute sets (a handle for fixed addresses, each with its own purpose)
// is found past the first few records of the handle by the hash of its
// encoding: an acquire with an equal map that is another map finds its
// record, the decoders refuse a second record equal to the fortieth, and
// ReleaseHandle releases every address of the handle.
func TestOneHandleManyAttributeSets(t *testing.T) {
	const n = 64
	b, err := New(netip.MustParsePrefix("10.0.0.0/25"))
	if err != nil {
		t.Fatal(err)
	}
	attrs := func(i int) map[string]string {
		return map[string]string{"purpose": "fixed", "i": fmt.Sprint(i)}
	}
	for i := range n {
		b.Allocate(nil, 1, Owner{Handle: "static", Attrs: attrs(i)})
	}
	b.Allocate(nil, 1, Owner{Handle: "other"})
	if got := b.recs.live; got != n+1 {
		t.Fatalf("%d live records, want %d", got, n+1)
	}
	// Equal content, another map: the record of the handle's 40th set.
	before := len(b.recs.recs)
	addrs, _ := b.Allocate(nil, 1, Owner{Handle: "static", Attrs: attrs(39)})
	o, _ := b.ordinal(addrs[0])
	if len(b.recs.recs) != before || b.recs.recs[b.owner[o]].refs != 2 {
		t.Fatalf("an equal attribute map made a record of its own: %d records, want %d", len(b.recs.recs), before)
	}
	if err := b.verify(); err != nil {
		t.Fatal(err)
	}

	// Both decoders refuse a duplicate of a record well past the first few
	// of its handle.
	enc, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var c Block
	if err := c.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	if err := c.verify(); err != nil {
		t.Fatal(err)
	}
	dup := appendOwner(nil, "static", attrs(39))
	other := appendOwner(nil, "static", attrs(40))
	i := strings.Index(string(enc), string(other))
	if i < 0 {
		t.Fatal("the encoding holds no record of the 41st set")
	}
	bad := append(append(append([]byte(nil), enc[:i]...), dup...), enc[i+len(other):]...)
	err = c.UnmarshalBinary(bad)
	if err == nil || !strings.Contains(err.Error(), "already an owner") {
		t.Fatalf("a duplicate owner record decoded: %v", err)
	}
	js, err := b.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	badJS := strings.Replace(string(js), `"i":"40"`, `"i":"39"`, 1)
	if badJS == string(js) {
		t.Fatalf("the JSON holds no set 40: %s", js)
	}
	if err := c.UnmarshalJSON([]byte(badJS)); err == nil || !strings.Contains(err.Error(), "already an owner") {
		t.Fatalf("a duplicate owner in JSON decoded: %v", err)
	}

	if got := b.ReleaseHandle("static", nil); len(got) != n+1 {
		t.Fatalf("ReleaseHandle released %d addresses, want %d", len(got), n+1)
	}
	if got := b.recs.live; got != 1 {
		t.Fatalf("%d live records after the release, want 1", got)
	}
	if err := b.verify(); err != nil {
		t.Fatal(err)
	}
}
