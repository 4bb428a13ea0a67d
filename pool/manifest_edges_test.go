package pool_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

// Duplicate members are refused at every level DecodeManifest reads (the
// document, metadata, spec), not only in the spec, and errors inside lists
// and after earlier documents give the position among the IPPools read.
func TestDecodeManifestDuplicatesAndPositions(t *testing.T) {
	const ok = `{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"a"},"spec":{"cidr":"10.0.0.0/16"}}`
	for _, tt := range []struct{ name, input, want string }{
		{"kind twice", `{"apiVersion":"projectcalico.org/v3","kind":"IPPool","kind":"IPPool","metadata":{"name":"a"}}`,
			`manifest item 1: "kind": appears twice`},
		{"spec twice", `{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"a"},"spec":{},"spec":{}}`,
			`manifest item 1: "spec": appears twice`},
		{"name twice", `{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"a","name":"b"}}`,
			`manifest item 1: metadata: "name": appears twice`},
		{"escaped duplicate", `{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"a"},"spec":{"cidr":"10.0.0.0/16","ci\u0064r":"10.1.0.0/16"}}`,
			`manifest item 1 (IPPool "a"): spec: "cidr": appears twice`},
		{"third item of a list after a stream", ok + `{"apiVersion":"crd.projectcalico.org/v1","kind":"IPPoolList","items":[` +
			`{"metadata":{"name":"b"}},{"metadata":{"name":"c"},"spec":{"blockSize":"26"}}]}`,
			`manifest item 3 (IPPool "c"): spec.blockSize: want an integer, got "26"`},
		{"null in an array", "[" + ok + ",null]", "manifest item 2: want an object, got null"},
		{"list item of another version", `{"apiVersion":"projectcalico.org/v3","kind":"IPPoolList","items":[{"apiVersion":"v1","kind":"IPPool","metadata":{"name":"b"}}]}`,
			`manifest item 1: apiVersion "v1": want projectcalico.org/v3 or crd.projectcalico.org/v1`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pools, err := pool.DecodeManifest([]byte(tt.input))
			require.Nil(t, pools)
			require.EqualError(t, err, tt.want)
		})
	}
	for _, empty := range []string{`[]`, `{"apiVersion":"projectcalico.org/v3","kind":"IPPoolList"}`, `{"kind":"List","items":null}`} {
		pools, err := pool.DecodeManifest([]byte(empty))
		require.NoError(t, err, empty)
		require.NotNil(t, pools, empty)
		require.Empty(t, pools, empty)
	}
}
