package block_test

import (
	"errors"
	"testing"

	"github.com/carve-ipam/carve/block"
)

// TestJSONClaimTimeInUTC decodes claim times that are within years 1
// to 9999 in their own offset but not in UTC, where the block keeps them.
// UnmarshalJSON must refuse them (ErrCorrupt) or give a block that both
// encoders accept: a decoder must not produce a block nobody can write.
func TestJSONClaimTimeInUTC(t *testing.T) {
	for _, claim := range []string{
		"0001-01-01T00:30:00+01:00", // 0000-12-31T23:30:00Z
		"9999-12-31T23:30:00-01:00", // 10000-01-01T00:30:00Z
	} {
		js := `{"version":1,"cidr":"10.0.0.0/30","affinity":"host:n","claimTime":"` + claim + `"}`
		var b block.Block
		err := b.UnmarshalJSON([]byte(js))
		if err != nil {
			if !errors.Is(err, block.ErrCorrupt) {
				t.Errorf("claim time %s: error %v does not wrap ErrCorrupt", claim, err)
			}
			continue
		}
		if _, err := b.MarshalBinary(); err != nil {
			t.Errorf("claim time %s: accepted by UnmarshalJSON, then MarshalBinary: %v", claim, err)
		}
		if _, err := b.MarshalJSON(); err != nil {
			t.Errorf("claim time %s: accepted by UnmarshalJSON, then MarshalJSON: %v", claim, err)
		}
	}
}
