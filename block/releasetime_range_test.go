package block_test

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/carve-ipam/carve/block"
)

// jsonRoundTrips reports why b's JSON encoding does not decode to an Equal
// block, or "".
func jsonRoundTrips(b *block.Block) string {
	js, err := b.MarshalJSON()
	if err != nil {
		return "MarshalJSON: " + err.Error()
	}
	var back block.Block
	if err := back.UnmarshalJSON(js); err != nil {
		return "UnmarshalJSON " + string(js) + ": " + err.Error()
	}
	if !back.Equal(b) {
		return "not Equal after " + string(js)
	}
	return ""
}

// TestReleaseTimeRangeAgrees checks that ReleaseAt, UnmarshalBinary
// and UnmarshalJSON agree on which release times a block may hold (after
// 1970 and before 2262, says ReleaseAt): every block one of them accepts
// must survive a JSON round trip.
func TestReleaseTimeRangeAgrees(t *testing.T) {
	// 2261-12-31T23:30 one hour west of Greenwich is 2262-01-01T00:30Z.
	west := time.Date(2261, 12, 31, 23, 30, 0, 0, time.FixedZone("W", -3600))

	t.Run("ReleaseAt", func(t *testing.T) {
		b := mustNew(t, "10.0.0.0/30", 1)
		got, _ := b.Allocate(nil, 1, podA)
		err := b.ReleaseAt(got[0], noChk, west)
		switch {
		case err != nil && !errors.Is(err, block.ErrCorrupt):
			t.Fatalf("ReleaseAt(%v): %v does not wrap ErrCorrupt", west, err)
		case err == nil:
			if why := jsonRoundTrips(b); why != "" {
				t.Fatalf("ReleaseAt(%v) accepted, then %s", west, why)
			}
		}
	})

	t.Run("UnmarshalJSON", func(t *testing.T) {
		js := `{"version":1,"cidr":"10.0.0.0/30","released":[{"addr":"10.0.0.1","at":"` + west.Format(time.RFC3339) + `"}]}`
		var b block.Block
		err := b.UnmarshalJSON([]byte(js))
		switch {
		case err != nil && !errors.Is(err, block.ErrCorrupt):
			t.Fatalf("%v does not wrap ErrCorrupt", err)
		case err == nil:
			if why := jsonRoundTrips(&b); why != "" {
				t.Fatalf("%s accepted, then %s", js, why)
			}
		}
	})

	t.Run("UnmarshalBinary", func(t *testing.T) {
		for _, ns := range []int64{
			time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(),
			math.MaxInt64, // 2262-04-11T23:47:16.854775807Z
		} {
			// An empty 10.0.0.0/30, version 2: one release time, on 10.0.0.1.
			data := []byte{2, 4, 30, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1}
			data = binary.AppendUvarint(data, uint64(ns)<<1)
			var b block.Block
			err := b.UnmarshalBinary(data)
			switch {
			case err != nil && !errors.Is(err, block.ErrCorrupt):
				t.Fatalf("%v does not wrap ErrCorrupt", err)
			case err == nil:
				if at, ok := b.ReleasedAt(addr("10.0.0.1")); !ok || at.UnixNano() != ns {
					t.Fatalf("test input wrong: released at %v %v", at, ok)
				}
				if why := jsonRoundTrips(&b); why != "" {
					t.Errorf("release time %v accepted by UnmarshalBinary, then %s", time.Unix(0, ns).UTC(), why)
				}
			}
		}
	})
}
