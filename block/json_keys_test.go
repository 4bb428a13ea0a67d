package block_test

import (
	"errors"
	"testing"

	"github.com/carve-ipam/carve/block"
)

// TestJSONKeysExactAndOnce: the JSON decoder is a parser as strict as
// the binary one, which refuses an owner or an attribute key written twice.
// A field given twice (which one counts?), an attribute key given twice
// (which value?) or a field name in another letter case is not the JSON
// MarshalJSON writes and must be refused, not resolved silently as
// encoding/json does (last one wins, names match in any case).
func TestJSONKeysExactAndOnce(t *testing.T) {
	const head = `{"version":1,"cidr":"10.0.0.0/30"`
	for name, js := range map[string]string{
		"seq twice":             head + `,"seq":5,"seq":7}`,
		"cidr twice":            `{"version":1,"cidr":"10.0.0.0/30","cidr":"10.0.0.4/30"}`,
		"field in upper case":   `{"version":1,"CIDR":"10.0.0.0/30"}`,
		"seq in another case":   head + `,"seq":5,"Seq":7}`,
		"attribute key twice":   head + `,"owners":[{"handle":"h","attrs":{"pod":"a","pod":"b"}}],"allocations":[{"addr":"10.0.0.1","owner":0,"seq":1}]}`,
		"handle twice":          head + `,"owners":[{"handle":"h","handle":"g"}],"allocations":[{"addr":"10.0.0.1","owner":0,"seq":1}]}`,
		"allocation addr case":  head + `,"owners":[{"handle":"h"}],"allocations":[{"Addr":"10.0.0.1","owner":0,"seq":1}]}`,
		"seq escaped twice":     head + `,"seq":5,"se\u0071":7}`,
		"tenth attribute twice": head + `,"owners":[{"handle":"h","attrs":{"a":"","b":"","c":"","d":"","e":"","f":"","g":"","h":"","i":"","j":"","a":"x"}}],"allocations":[{"addr":"10.0.0.1","owner":0,"seq":1}]}`,
	} {
		var b block.Block
		err := b.UnmarshalJSON([]byte(js))
		if err == nil {
			t.Errorf("%s: accepted %s", name, js)
		} else if !errors.Is(err, block.ErrCorrupt) {
			t.Errorf("%s: %v does not wrap ErrCorrupt", name, err)
		}
	}
}

// TestJSONKeysAccepted: the key check passes what MarshalJSON writes
// and JSON that differs only in layout, escapes and order.
func TestJSONKeysAccepted(t *testing.T) {
	b := goldenBlock(t)
	js, err := b.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{
		string(js),
		` { "version" : 1 , "cidr" : "10.0.0.0/30" , "seq" : 104 , "cursor" : 2 , "affinity" : "host:n" , "claimTime" : "2025-01-02T03:04:05.000000006Z" , ` +
			`"reserved" : [ "10.0.0.3" ] , "owners" : [ { "attrs" : { "\u0061" : "1" } , "handle" : "h" } , { "handle" : "g" , "attrs" : { } } ] , ` +
			`"allocations" : [ { "seq" : 103 , "owner" : 1 , "addr" : "10.0.0.2" } , { "addr" : "10.0.0.1" , "owner" : 0 , "seq" : 102 } , { "addr" : "10.0.0.0" , "owner" : 0 , "seq" : 102 } ] , "released" : [ ] } `,
	} {
		var back block.Block
		if err := back.UnmarshalJSON([]byte(in)); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if !back.Equal(b) {
			t.Fatalf("%s: not the block", in)
		}
	}
}
