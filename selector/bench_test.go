package selector_test

import (
	"testing"

	"github.com/carve-ipam/carve/selector"
)

// benchNode returns the labels of a realistic Kubernetes node: ten labels.
func benchNode() selector.Set {
	return selector.Set{
		"beta.kubernetes.io/arch":        "amd64",
		"kubernetes.io/arch":             "amd64",
		"kubernetes.io/hostname":         "worker-17",
		"kubernetes.io/os":               "linux",
		"node-role.kubernetes.io/worker": "",
		"topology.kubernetes.io/region":  "eu-west-1",
		"topology.kubernetes.io/zone":    "eu-west-1b",
		"rack":                           "0",
		"ssd":                            "true",
		"zone":                           "b",
	}
}

type benchSelector struct {
	name, text string
}

// benchSelectors are pool node selectors of the kinds seen in practice.
func benchSelectors() []benchSelector {
	return []benchSelector{
		{"all", `all()`},
		{"type-eq", `type == "test"`},
		{"rack-and-has", `rack == "0" && has(ssd)`},
		{"zone-in", `zone in {"a","b","c"}`},
		{"or-of-ands", `(rack == "1" && has(ssd)) || (zone in {"c", "d"} && kubernetes.io/os == "linux") || ` +
			`(topology.kubernetes.io/region == "eu-west-1" && !has(node-role.kubernetes.io/control-plane))`},
	}
}

func BenchmarkMatches(b *testing.B) {
	var node selector.Labels = benchNode()
	for _, bs := range benchSelectors() {
		sel := selector.MustParse(bs.text)
		b.Run("sel="+bs.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sel.Matches(node)
			}
		})
	}
}

func BenchmarkParse(b *testing.B) {
	for _, bs := range benchSelectors() {
		b.Run("sel="+bs.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := selector.Parse(bs.text); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
