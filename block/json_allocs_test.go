package block

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
)

// TestUnmarshalJSONOwnerAllocs keeps what UnmarshalJSON allocates beyond
// encoding/json's decode of the same document from growing with the
// number of owners: decoding into a block that has held such a block
// before reuses its memory, so each owner record costs nothing of its own
// (its encoding goes straight into the block's arena).
func TestUnmarshalJSONOwnerAllocs(t *testing.T) {
	extra := func(owners int) float64 {
		b, err := New(netip.MustParsePrefix("10.0.0.0/24"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range owners {
			name := fmt.Sprint("pod-", i)
			b.Allocate(nil, 1, Owner{Handle: "k8s-pod-network." + name, Attrs: map[string]string{"namespace": "default", "pod": name}})
		}
		js, err := b.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var back Block
		if err := back.UnmarshalJSON(js); err != nil {
			t.Fatal(err)
		}
		decode := testing.AllocsPerRun(50, func() {
			if err := back.UnmarshalJSON(js); err != nil {
				t.Fatal(err)
			}
		})
		plain := testing.AllocsPerRun(50, func() {
			var j jsonBlock
			dec := json.NewDecoder(bytes.NewReader(js))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&j); err != nil {
				t.Fatal(err)
			}
			_, _ = dec.Token()
		})
		return decode - plain
	}
	few, many := extra(8), extra(128)
	t.Logf("allocations beyond encoding/json's: %v with 8 owners, %v with 128", few, many)
	if many > few+2 {
		t.Errorf("UnmarshalJSON allocates %v times beyond encoding/json's decode with 128 owners, %v with 8: owner records cost allocations of their own", many, few)
	}
}
