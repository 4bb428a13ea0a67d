package ipam

import "net/netip"

// DecodeHandle decodes a handle record's value into its per-block counts.
func DecodeHandle(value []byte) (map[netip.Prefix]int, error) {
	var h handleRecord
	if err := h.unmarshal(value); err != nil {
		return nil, err
	}
	out := map[netip.Prefix]int{}
	for _, c := range h.entries() {
		out[c.block] = c.count
	}
	return out, nil
}
