package pool_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

// v4 returns a valid IPv4 pool to break one rule at a time.
func v4(name, cidr string) pool.Pool {
	return pool.Pool{Name: name, CIDR: netip.MustParsePrefix(cidr)}
}

// TestValidateRules has one row per validation rule, with the exact text.
func TestValidateRules(t *testing.T) {
	tests := []struct {
		rule string
		pool func() pool.Pool
		want string
		kind error
	}{
		{"name is required", func() pool.Pool { return v4("", "10.0.0.0/16") },
			`pool "": name is required`, pool.ErrName},
		{"name is a DNS subdomain", func() pool.Pool { return v4("Extra_1", "10.0.0.0/16") },
			`pool "Extra_1": name "Extra_1" is not a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)`, pool.ErrName},
		{"cidr is required", func() pool.Pool { return pool.Pool{Name: "extra"} },
			`pool "extra": cidr is required`, pool.ErrCIDR},
		{"cidr length in range", func() pool.Pool {
			return pool.Pool{Name: "extra", CIDR: netip.PrefixFrom(netip.MustParseAddr("10.0.0.0"), 40)}
		}, `pool "extra": cidr 10.0.0.0 has a prefix length outside 0..32`, pool.ErrCIDR},
		{"cidr is masked", func() pool.Pool { return v4("extra", "10.0.0.1/24") },
			`pool "extra": cidr 10.0.0.1/24 is not masked`, pool.ErrCIDR},
		{"cidr is not IPv4-mapped", func() pool.Pool { return v4("mapped", "::ffff:10.0.0.0/112") },
			`pool "mapped": cidr ::ffff:10.0.0.0/112 is an IPv4-mapped IPv6 prefix; write IPv4 pools in IPv4 form`, pool.ErrCIDR},
		{"no IPv4 link-local", func() pool.Pool { return v4("ll", "169.254.0.0/24") },
			`pool "ll": cidr 169.254.0.0/24 overlaps the IPv4 link-local range 169.254.0.0/16`, pool.ErrLinkLocal},
		{"no IPv4 link-local, containing it", func() pool.Pool { return v4("ll", "169.0.0.0/8") },
			`pool "ll": cidr 169.0.0.0/8 overlaps the IPv4 link-local range 169.254.0.0/16`, pool.ErrLinkLocal},
		{"no IPv6 link-local", func() pool.Pool { return v4("ll6", "fe80::/64") },
			`pool "ll6": cidr fe80::/64 overlaps the IPv6 link-local range fe80::/10`, pool.ErrLinkLocal},
		{"IPv4 blockSize at least 20", func() pool.Pool { p := v4("b", "10.0.0.0/8"); p.BlockSize = 19; return p },
			`pool "b": blockSize 19 is outside 20..32 (IPv4)`, pool.ErrBlockSize},
		{"IPv4 blockSize at most 32", func() pool.Pool { p := v4("b", "10.0.0.0/8"); p.BlockSize = 33; return p },
			`pool "b": blockSize 33 is outside 20..32 (IPv4)`, pool.ErrBlockSize},
		{"IPv6 blockSize at least 116", func() pool.Pool { p := v4("b6", "fd00::/48"); p.BlockSize = 26; return p },
			`pool "b6": blockSize 26 is outside 116..128 (IPv6)`, pool.ErrBlockSize},
		{"IPv6 blockSize at most 128", func() pool.Pool { p := v4("b6", "fd00::/48"); p.BlockSize = 129; return p },
			`pool "b6": blockSize 129 is outside 116..128 (IPv6)`, pool.ErrBlockSize},
		{"pool holds a block (default blockSize)", func() pool.Pool { return v4("tiny", "10.0.0.0/28") },
			`pool "tiny": cidr 10.0.0.0/28 is smaller than one block (blockSize 26); only a disabled pool may be, an enabled one needs blockSize 28 or more`, pool.ErrBlockSize},
		{"pool holds a block (IPv6)", func() pool.Pool { return v4("tiny6", "fd00::/124") },
			`pool "tiny6": cidr fd00::/124 is smaller than one block (blockSize 122); only a disabled pool may be, an enabled one needs blockSize 124 or more`, pool.ErrBlockSize},
		{"nodeSelector parses", func() pool.Pool { p := v4("s", "10.0.0.0/16"); p.NodeSelector = `rack ==`; return p },
			`pool "s": nodeSelector "rack ==" does not parse: offset 7: expected a string after "=="`, pool.ErrSelector},
		{"namespaceSelector parses", func() pool.Pool { p := v4("s", "10.0.0.0/16"); p.NamespaceSelector = `team == `; return p },
			`pool "s": namespaceSelector "team == " does not parse: offset 8: expected a string after "=="`, pool.ErrSelector},
		{"no global() in nodeSelector", func() pool.Pool { p := v4("g", "10.0.0.0/16"); p.NodeSelector = `global() && a == "b"`; return p },
			`pool "g": nodeSelector "global() && a == \"b\"" uses global(), which pool selectors may not`, pool.ErrSelector},
		{"no global() in namespaceSelector", func() pool.Pool { p := v4("g", "10.0.0.0/16"); p.NamespaceSelector = `global()`; return p },
			`pool "g": namespaceSelector "global()" uses global(), which pool selectors may not`, pool.ErrSelector},
		{"allowedUses are known", func() pool.Pool {
			p := v4("u", "10.0.0.0/16")
			p.AllowedUses = []pool.Use{pool.UseWorkload, "workload"}
			return p
		}, `pool "u": allowedUses "workload" is not Workload, Tunnel or LoadBalancer`, pool.ErrAllowedUses},
		{"LoadBalancer is not mixed", func() pool.Pool {
			p := v4("lb", "10.0.0.0/16")
			p.AllowedUses = []pool.Use{pool.UseLoadBalancer, pool.UseWorkload}
			return p
		}, `pool "lb": allowedUses [LoadBalancer Workload] mixes LoadBalancer with other uses`, pool.ErrLoadBalancer},
		{"LoadBalancer selects all nodes", func() pool.Pool {
			p := v4("lb", "10.0.0.0/16")
			p.AllowedUses = []pool.Use{pool.UseLoadBalancer}
			p.NodeSelector = `rack == "1"`
			return p
		}, `pool "lb": nodeSelector "rack == \"1\"" must be all() in a LoadBalancer pool`, pool.ErrLoadBalancer},
		{"LoadBalancer has no IPIP", func() pool.Pool {
			p := v4("lb", "10.0.0.0/16")
			p.AllowedUses = []pool.Use{pool.UseLoadBalancer}
			p.IPIPMode = pool.CrossSubnet
			return p
		}, `pool "lb": ipipMode CrossSubnet is not allowed in a LoadBalancer pool`, pool.ErrLoadBalancer},
		{"LoadBalancer has no VXLAN", func() pool.Pool {
			p := v4("lb", "10.0.0.0/16")
			p.AllowedUses = []pool.Use{pool.UseLoadBalancer}
			p.VXLANMode = pool.Always
			return p
		}, `pool "lb": vxlanMode Always is not allowed in a LoadBalancer pool`, pool.ErrLoadBalancer},
		{"LoadBalancer exports over BGP", func() pool.Pool {
			p := v4("lb", "10.0.0.0/16")
			p.AllowedUses = []pool.Use{pool.UseLoadBalancer}
			p.DisableBGPExport = true
			return p
		}, `pool "lb": disableBGPExport true is not allowed in a LoadBalancer pool`, pool.ErrLoadBalancer},
		{"ipipMode is known", func() pool.Pool { p := v4("m", "10.0.0.0/16"); p.IPIPMode = "always"; return p },
			`pool "m": ipipMode "always" is not Never, Always or CrossSubnet`, pool.ErrEncapsulation},
		{"vxlanMode is known", func() pool.Pool { p := v4("m", "10.0.0.0/16"); p.VXLANMode = "cross-subnet"; return p },
			`pool "m": vxlanMode "cross-subnet" is not Never, Always or CrossSubnet`, pool.ErrEncapsulation},
		{"no IPIP on IPv6", func() pool.Pool { p := v4("m6", "fd00::/48"); p.IPIPMode = pool.Always; return p },
			`pool "m6": ipipMode Always is not supported on IPv6`, pool.ErrEncapsulation},
		{"not both IPIP and VXLAN", func() pool.Pool {
			p := v4("m", "10.0.0.0/16")
			p.IPIPMode, p.VXLANMode = pool.Always, pool.CrossSubnet
			return p
		}, `pool "m": vxlanMode CrossSubnet cannot be enabled together with ipipMode Always`, pool.ErrEncapsulation},
		{"assignmentMode is known", func() pool.Pool { p := v4("a", "10.0.0.0/16"); p.AssignmentMode = "Auto"; return p },
			`pool "a": assignmentMode Auto is not Automatic or Manual`, pool.ErrAssignmentMode},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			p := tt.pool()
			err := p.Validate()
			require.EqualError(t, err, tt.want)
			require.ErrorIs(t, err, tt.kind)
			var ve *pool.ValidationError
			require.ErrorAs(t, err, &ve)
			require.Len(t, ve.Problems, 1)
			require.Equal(t, p.Name, ve.Problems[0].Pool)
			require.Equal(t, tt.want, ve.Problems[0].Error())

			// The same pool with defaults applied has the same problem.
			require.EqualError(t, p.WithDefaults().Validate(), tt.want)
		})
	}
}

func TestValidateAcceptsEdges(t *testing.T) {
	ok := []pool.Pool{
		v4("a", "10.0.0.0/26"),
		v4("a.b-c", "10.0.0.0/8"),
		v4("six", "fd00::/122"),
		func() pool.Pool { p := v4("tiny", "10.0.0.0/28"); p.Disabled = true; return p }(), // only a disabled pool may be smaller than a block
		func() pool.Pool { p := v4("b32", "10.0.0.1/32"); p.BlockSize = 32; return p }(),   // one address
		func() pool.Pool { p := v4("b20", "10.0.0.0/20"); p.BlockSize = 20; return p }(),   // one block
		func() pool.Pool { p := v4("b128", "fd00::1/128"); p.BlockSize = 128; return p }(), // one IPv6 address
		func() pool.Pool { p := v4("b116", "fd00::/100"); p.BlockSize = 116; return p }(),  // largest IPv6 blocks
		func() pool.Pool { p := v4("x", "10.0.0.0/16"); p.IPIPMode = pool.CrossSubnet; return p }(),
		func() pool.Pool { p := v4("x", "fd00::/48"); p.VXLANMode = pool.Always; return p }(),
		func() pool.Pool {
			p := v4("x", "10.0.0.0/16")
			p.IPIPMode, p.VXLANMode = pool.Always, pool.Never
			return p
		}(),
		func() pool.Pool { p := v4("x", "10.0.0.0/16"); p.AssignmentMode = pool.Manual; return p }(),
		func() pool.Pool {
			p := v4("lb", "10.0.0.0/16")
			p.AllowedUses = []pool.Use{pool.UseLoadBalancer}
			p.NodeSelector = "all()"
			return p
		}(),
		func() pool.Pool { // LoadBalancer with the empty node selector, which means all()
			p := v4("lb", "10.0.0.0/16")
			p.AllowedUses = []pool.Use{pool.UseLoadBalancer}
			return p
		}(),
		func() pool.Pool {
			p := v4("sel", "10.0.0.0/16")
			p.NodeSelector = `rack in {"0", "1"} && !has(gpu)`
			p.NamespaceSelector = `team == "a"`
			return p
		}(),
	}
	for _, p := range ok {
		require.NoError(t, p.Validate(), "%+v", p)
		require.NoError(t, p.WithDefaults().Validate(), "%+v", p)
	}
}

// TestValidateAllProblemsTogether checks that one error lists every
// problem of the pool, in rule order, and matches each kind.
func TestValidateAllProblemsTogether(t *testing.T) {
	p := pool.Pool{
		Name:           "bad",
		CIDR:           netip.MustParsePrefix("fe80::1/64"),
		BlockSize:      26,
		NodeSelector:   "rack ==",
		AllowedUses:    []pool.Use{pool.UseLoadBalancer, pool.UseTunnel},
		IPIPMode:       pool.Always,
		VXLANMode:      pool.Always,
		AssignmentMode: "sometimes",
	}
	err := p.Validate()
	require.EqualError(t, err, `pool "bad": `+
		`cidr fe80::1/64 is not masked; `+
		`cidr fe80::1/64 overlaps the IPv6 link-local range fe80::/10; `+
		`blockSize 26 is outside 116..128 (IPv6); `+
		`nodeSelector "rack ==" does not parse: offset 7: expected a string after "=="; `+
		`allowedUses [LoadBalancer Tunnel] mixes LoadBalancer with other uses; `+
		`ipipMode Always is not allowed in a LoadBalancer pool; `+
		`vxlanMode Always is not allowed in a LoadBalancer pool; `+
		`ipipMode Always is not supported on IPv6; `+
		`vxlanMode Always cannot be enabled together with ipipMode Always; `+
		`assignmentMode sometimes is not Automatic or Manual`)
	for _, kind := range []error{pool.ErrCIDR, pool.ErrLinkLocal, pool.ErrBlockSize, pool.ErrSelector,
		pool.ErrLoadBalancer, pool.ErrEncapsulation, pool.ErrAssignmentMode} {
		require.ErrorIs(t, err, kind)
	}
	require.NotErrorIs(t, err, pool.ErrName)
	require.NotErrorIs(t, err, pool.ErrOverlap)

	var fe *pool.FieldError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, "cidr", fe.Field)
	require.Equal(t, "fe80::1/64", fe.Value)
}

func TestValidateUpdate(t *testing.T) {
	old := v4("default", "10.244.0.0/16").WithDefaults()
	lb := v4("lb", "10.96.0.0/16")
	lb.AllowedUses = []pool.Use{pool.UseLoadBalancer}

	tests := []struct {
		name    string
		old     pool.Pool
		updated func(p pool.Pool) pool.Pool
		want    string // "" means accepted
	}{
		{"disable", old, func(p pool.Pool) pool.Pool { p.Disabled = true; return p }, ""},
		{"new selectors and modes", old, func(p pool.Pool) pool.Pool {
			p.NodeSelector, p.VXLANMode, p.AssignmentMode = `rack == "1"`, pool.Always, pool.Manual
			return p
		}, ""},
		{"zero blockSize is the same default", old, func(p pool.Pool) pool.Pool { p.BlockSize = 0; return p }, ""},
		{"Workload pool may become LoadBalancer", old, func(p pool.Pool) pool.Pool {
			p.AllowedUses, p.NodeSelector = []pool.Use{pool.UseLoadBalancer}, ""
			return p
		}, ""},
		{"cidr never changes", old, func(p pool.Pool) pool.Pool { p.CIDR = netip.MustParsePrefix("10.245.0.0/16"); return p },
			`pool "default": cidr 10.245.0.0/16 cannot change (was 10.244.0.0/16)`},
		{"blockSize never changes", old, func(p pool.Pool) pool.Pool { p.BlockSize = 27; return p },
			`pool "default": blockSize 27 cannot change (was 26)`},
		{"name never changes", old, func(p pool.Pool) pool.Pool { p.Name = "other"; return p },
			`pool "other": name "other" cannot change (was "default")`},
		{"LoadBalancer stays LoadBalancer", lb, func(p pool.Pool) pool.Pool { p.AllowedUses = nil; return p },
			`pool "lb": allowedUses [Workload Tunnel] must stay [LoadBalancer]: a LoadBalancer pool cannot become another kind`},
		{"LoadBalancer stays only LoadBalancer", lb, func(p pool.Pool) pool.Pool {
			p.AllowedUses = []pool.Use{pool.UseLoadBalancer, pool.UseWorkload}
			return p
		}, `pool "lb": allowedUses [LoadBalancer Workload] must stay [LoadBalancer]: a LoadBalancer pool cannot become another kind; ` +
			`allowedUses [LoadBalancer Workload] mixes LoadBalancer with other uses`},
		{"update problems and rule problems together", old, func(p pool.Pool) pool.Pool {
			p.BlockSize, p.IPIPMode = 25, "on"
			return p
		}, `pool "default": blockSize 25 cannot change (was 26); ipipMode "on" is not Never, Always or CrossSubnet`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := pool.ValidateUpdate(tt.old, tt.updated(tt.old))
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tt.want)
			var ve *pool.ValidationError
			require.True(t, errors.As(err, &ve))
		})
	}
	require.ErrorIs(t, pool.ValidateUpdate(old, func(p pool.Pool) pool.Pool { p.BlockSize = 27; return p }(old)), pool.ErrImmutable)
}
