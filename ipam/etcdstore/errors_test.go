package etcdstore_test

import (
	"strings"
	"testing"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
)

// TestInvalidKindErrorsNameCall: the package documents that errors
// name the operation and the key, and Commit's error for a write of an
// invalid kind does; the single operations said only "invalid record kind
// 200", which tells a caller of the store (a wrapper, a tool reading
// records) neither which call failed nor on what.
func TestInvalidKindErrorsNameCall(t *testing.T) {
	s := newStore(t, newClient(t), etcdstore.Options{})
	ctx := t.Context()
	const kind = ipam.Kind(200)
	for _, tt := range []struct {
		op   string
		call func() error
		want []string
	}{
		{"get", func() error { _, err := s.Get(ctx, kind, "pod-1"); return err }, []string{"get", `"pod-1"`}},
		{"list", func() error {
			_, err := s.List(ctx, kind, ipam.KeyRange{Start: "a-start"})
			return err
		}, []string{"list", `"a-start"`}},
		{"create", func() error { _, err := s.Create(ctx, kind, "pod-1", nil); return err }, []string{"create", `"pod-1"`}},
		{"update", func() error { _, err := s.Update(ctx, kind, "pod-1", nil, 1); return err }, []string{"update", `"pod-1"`}},
		{"delete", func() error { return s.Delete(ctx, kind, "pod-1", 1) }, []string{"delete", `"pod-1"`}},
	} {
		err := tt.call()
		if err == nil {
			t.Errorf("%s with kind 200 succeeded", tt.op)
			continue
		}
		for _, w := range append(tt.want, "kind 200") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s with kind 200: error %q does not say %s", tt.op, err, w)
			}
		}
	}
}
