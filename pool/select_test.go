package pool_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

func labels(kv ...string) selector.Set {
	s := selector.Set{}
	for i := 0; i+1 < len(kv); i += 2 {
		s[kv[i]] = kv[i+1]
	}
	return s
}

// selectionSet has one pool for each selection rule.
func selectionSet(t *testing.T) *pool.Set {
	var s pool.Set
	add := func(name, cidr string, edit func(p *pool.Pool)) {
		p := pool.Pool{Name: name, CIDR: netip.MustParsePrefix(cidr)}
		if edit != nil {
			edit(&p)
		}
		require.NoError(t, s.Add(p))
	}
	add("default-ipv4", "10.244.0.0/16", nil)
	add("default-ipv6", "fd00::/48", nil)
	add("rack-0", "192.168.0.0/24", func(p *pool.Pool) { p.NodeSelector = `rack == "0"` })
	add("rack-1", "192.168.1.0/24", func(p *pool.Pool) { p.NodeSelector = `rack == "1"` })
	add("old", "10.0.0.0/16", func(p *pool.Pool) { p.Disabled = true })
	add("manual", "10.1.0.0/16", func(p *pool.Pool) { p.AssignmentMode = pool.Manual })
	add("team-a", "10.2.0.0/16", func(p *pool.Pool) { p.NamespaceSelector = `team == "a"` })
	add("no-team", "10.3.0.0/16", func(p *pool.Pool) { p.NamespaceSelector = `!has(team)` })
	add("lb", "10.96.0.0/16", func(p *pool.Pool) { p.AllowedUses = []pool.Use{pool.UseLoadBalancer} })
	add("tunnel", "10.4.0.0/16", func(p *pool.Pool) { p.AllowedUses = []pool.Use{pool.UseTunnel} })
	return &s
}

func TestSelect(t *testing.T) {
	s := selectionSet(t)
	rack0 := labels("rack", "0")
	tests := []struct {
		name string
		req  pool.Request
		want []string // pool names in order, or nil for an error
		err  string
	}{
		{"automatic: by name; namespace selector matched against no labels",
			pool.Request{Family: pool.IPv4, Node: "n0", NodeLabels: rack0},
			[]string{"default-ipv4", "no-team", "rack-0"}, ""},
		{"namespace labels",
			pool.Request{Family: pool.IPv4, Node: "n0", NodeLabels: rack0, NamespaceLabels: labels("team", "a")},
			[]string{"default-ipv4", "rack-0", "team-a"}, ""},
		{"either family", pool.Request{Node: "n0", NodeLabels: rack0},
			[]string{"default-ipv4", "default-ipv6", "no-team", "rack-0"}, ""},
		{"IPv6", pool.Request{Family: pool.IPv6, Node: "n0"}, []string{"default-ipv6"}, ""},
		{"node without labels", pool.Request{Family: pool.IPv4, Node: "bare"}, []string{"default-ipv4", "no-team"}, ""},
		{"tunnel use", pool.Request{Family: pool.IPv4, Node: "n1", NodeLabels: labels("rack", "1"), Use: pool.UseTunnel},
			[]string{"default-ipv4", "no-team", "rack-1", "tunnel"}, ""},
		{"load balancer use", pool.Request{Family: pool.IPv4, Use: pool.UseLoadBalancer}, []string{"lb"}, ""},
		{"requested Manual pool", pool.Request{Family: pool.IPv4, Node: "n0", Pools: []string{"manual"}}, []string{"manual"}, ""},
		{"requested pool bypasses nodeSelector", pool.Request{Family: pool.IPv4, Node: "n0", NodeLabels: rack0, Pools: []string{"rack-1"}},
			[]string{"rack-1"}, ""},
		{"requested pool bypasses namespaceSelector", pool.Request{Family: pool.IPv4, Pools: []string{"team-a"}},
			[]string{"team-a"}, ""},
		{"requested order, each once", pool.Request{Family: pool.IPv4, Pools: []string{"rack-1", "default-ipv4", "rack-1"}},
			[]string{"rack-1", "default-ipv4"}, ""},
		{"requested pools of any family", pool.Request{Pools: []string{"default-ipv6", "default-ipv4"}},
			[]string{"default-ipv6", "default-ipv4"}, ""},
		{"requested pool without the use is dropped", pool.Request{Family: pool.IPv4, Pools: []string{"lb", "default-ipv4"}},
			[]string{"default-ipv4"}, ""},
		{"requested disabled pool", pool.Request{Family: pool.IPv4, Node: "n0", Pools: []string{"default-ipv4", "old"}}, nil,
			"no pool for node n0 (IPv4, Workload, pools default-ipv4,old): pool old: is disabled"},
		{"requested missing pool", pool.Request{Family: pool.IPv4, Node: "n0", Pools: []string{"ghost"}}, nil,
			"no pool for node n0 (IPv4, Workload, pools ghost): pool ghost: no pool has this name or CIDR"},
		{"requested pool of the other family", pool.Request{Family: pool.IPv4, Node: "n0", Pools: []string{"default-ipv6"}}, nil,
			"no pool for node n0 (IPv4, Workload, pools default-ipv6): pool default-ipv6: is IPv6, the request is for IPv4"},
		{"requested pools without the use", pool.Request{Family: pool.IPv4, Use: pool.UseLoadBalancer, Pools: []string{"default-ipv4"}}, nil,
			"no pool for the request (IPv4, LoadBalancer, pools default-ipv4): pool default-ipv4: allowedUses [Workload Tunnel] does not include LoadBalancer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Select(tt.req)
			if tt.want == nil {
				require.EqualError(t, err, tt.err)
				require.ErrorIs(t, err, pool.ErrNoPool)
				require.Equal(t, tt.name == "requested missing pool", errors.Is(err, pool.ErrNotFound),
					"only a name that no pool has matches ErrNotFound")
				require.Empty(t, got)
				return
			}
			require.NoError(t, err)
			names := make([]string, len(got))
			for i, p := range got {
				names[i] = p.Name
			}
			require.Equal(t, tt.want, names)
		})
	}
}

// TestSelectExplainsEachRule checks the explanation when no pool
// qualifies: every pool, by name, with the first rule it fails.
func TestSelectExplainsEachRule(t *testing.T) {
	var s pool.Set
	for _, p := range []pool.Pool{
		{Name: "default", CIDR: netip.MustParsePrefix("10.244.0.0/16"), Disabled: true},
		{Name: "extra", CIDR: netip.MustParsePrefix("192.168.0.0/20"), NodeSelector: `rack == "1"`},
		{Name: "manual", CIDR: netip.MustParsePrefix("10.1.0.0/16"), AssignmentMode: pool.Manual},
		{Name: "team-a", CIDR: netip.MustParsePrefix("10.2.0.0/16"), NamespaceSelector: "team=='a'"},
		{Name: "tunnel", CIDR: netip.MustParsePrefix("10.4.0.0/16"), AllowedUses: []pool.Use{pool.UseTunnel}},
		{Name: "v6", CIDR: netip.MustParsePrefix("fd00::/48")},
	} {
		require.NoError(t, s.Add(p))
	}
	_, err := s.Select(pool.Request{Family: pool.IPv4, Node: "node-3", NodeLabels: labels("rack", "3")})
	require.EqualError(t, err, "no pool for node node-3 (IPv4, Workload): "+
		"pool default: is disabled; "+
		`pool extra: nodeSelector rack == "1" does not match node node-3 (labels rack=3); `+
		"pool manual: assignmentMode is Manual and the request does not name the pool; "+
		`pool team-a: namespaceSelector team == "a" does not match the namespace (no labels); `+
		"pool tunnel: allowedUses [Tunnel] does not include Workload; "+
		"pool v6: is IPv6, the request is for IPv4")
	var npe *pool.NoPoolError
	require.ErrorAs(t, err, &npe)
	reasons := make([]pool.Reason, len(npe.Rejections))
	for i, r := range npe.Rejections {
		reasons[i] = r.Reason
	}
	require.Equal(t, []pool.Reason{pool.ReasonDisabled, pool.ReasonNodeSelector, pool.ReasonManual,
		pool.ReasonNamespaceSelector, pool.ReasonUse, pool.ReasonFamily}, reasons)
	require.Equal(t, "nodeSelector", pool.ReasonNodeSelector.String())

	_, err = new(pool.Set).Select(pool.Request{Node: "n"})
	require.EqualError(t, err, "no pool for node n (any, Workload): the set has no pools")
}

// TestSelectNoAllocs: selection among 100 pools with a reused slice does
// not allocate.
func TestSelectNoAllocs(t *testing.T) {
	s := hundredPools(t)
	r := pool.Request{Family: pool.IPv4, Node: "node-42", NodeLabels: labels("rack", "42")}
	dst := make([]*pool.Pool, 0, 8)
	allocs := testing.AllocsPerRun(100, func() {
		got, err := s.AppendSelect(dst[:0], r)
		if err != nil || len(got) != 2 || got[0].Name != "rack-42" || got[1].Name != "shared" {
			t.Fatalf("AppendSelect = %v, %v", got, err)
		}
	})
	require.Zero(t, allocs)
}

// TestSelectorsCachedAndFresh: a pool uses its parsed selectors, but a
// copy whose selector text was edited never uses the stale parse.
func TestSelectorsCachedAndFresh(t *testing.T) {
	p := pool.Pool{Name: "p", CIDR: netip.MustParsePrefix("10.0.0.0/16"), NodeSelector: `rack == "1"`}
	require.True(t, p.SelectsNode("n", labels("rack", "1")), "no cache: parsed on the fly")
	d := p.WithDefaults()
	require.True(t, d.SelectsNode("n", labels("rack", "1")))
	require.False(t, d.SelectsNode("n", nil))
	require.Zero(t, testing.AllocsPerRun(100, func() { d.SelectsNode("n", labels0) }), "cached: no parsing")

	e := d
	e.NodeSelector = `rack == "2"`
	require.False(t, e.SelectsNode("n", labels("rack", "1")))
	require.True(t, e.SelectsNode("n", labels("rack", "2")))
	e.NodeSelector = "rack =="
	require.False(t, e.SelectsNode("n", labels("rack", "1")), "an invalid selector matches nothing")

	require.True(t, d.SelectsNamespace(nil), "empty namespaceSelector matches all")
	d.NamespaceSelector = "!has(team)"
	require.True(t, d.SelectsNamespace(nil), "nil namespace labels are the empty set")
	require.False(t, d.SelectsNamespace(labels("team", "x")))
}

var labels0 = labels("rack", "1")

func TestSelectByCIDR(t *testing.T) {
	s, err := pool.NewSet(pool.Pool{Name: "a", CIDR: netip.MustParsePrefix("10.0.0.0/16")}, pool.Pool{Name: "b", CIDR: netip.MustParsePrefix("10.1.0.0/16")})
	require.NoError(t, err)
	got, err := s.Select(pool.Request{Family: pool.IPv4, Pools: []string{"10.1.0.0/16", "a"}})
	require.NoError(t, err)
	require.Equal(t, "b", got[0].Name)
	require.Equal(t, "a", got[1].Name)
	_, err = s.Select(pool.Request{Family: pool.IPv4, Pools: []string{"10.1.0.0/24"}})
	require.ErrorIs(t, err, pool.ErrNoPool, "a CIDR inside a pool is not the pool")
}
