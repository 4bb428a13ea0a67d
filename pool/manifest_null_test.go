package pool_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

// DecodeManifest's documentation says to convert a YAML stream to JSON one
// document at a time, e.g. with sigs.k8s.io/yaml's YAMLToJSON. An empty or
// comment-only YAML document (a file that starts with a comment and "---",
// or ends with "---") converts to null, and calicoctl and kubectl skip such
// documents; DecodeManifest refused the whole stream with "want an object,
// got null".
func TestDecodeManifestSkipsEmptyYAMLDocuments(t *testing.T) {
	const doc = `{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"a"},"spec":{"cidr":"10.0.0.0/16"}}`
	pools, err := pool.DecodeManifest([]byte("null\n" + doc + "\nnull\n"))
	require.NoError(t, err)
	require.Len(t, pools, 1)
	require.Equal(t, "a", pools[0].Name)

	// A stream of nothing but empty documents still holds no manifest.
	_, err = pool.DecodeManifest([]byte("null\nnull"))
	require.EqualError(t, err, "manifest item 1: no manifest in the input")
}
