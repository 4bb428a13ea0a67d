package pool_test

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

func readManifest(t *testing.T, name string) []pool.Pool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "manifests", name))
	require.NoError(t, err)
	pools, err := pool.DecodeManifest(data)
	require.NoError(t, err, name)
	return pools
}

// TestSeedManifests decodes and validates every IPPool manifest of the seed
// documents, and checks what each decodes to.
func TestSeedManifests(t *testing.T) {
	tests := []struct {
		file string
		want []pool.Pool
	}{
		{"default-ipv4-pool.crd.json", []pool.Pool{{
			Name: "default-ipv4-pool", CIDR: netip.MustParsePrefix("10.244.0.0/18"), BlockSize: 26,
			NodeSelector: "all()", AllowedUses: []pool.Use{pool.UseWorkload, pool.UseTunnel},
			IPIPMode: pool.Never, VXLANMode: pool.Always, NATOutgoing: true,
		}}},
		{"extra-ippool.json", []pool.Pool{{
			Name: "extra-ippool", CIDR: netip.MustParsePrefix("192.168.0.0/20"), BlockSize: 26,
			VXLANMode: pool.Always, NATOutgoing: true,
		}}},
		{"extra-ippool-node-selector.json", []pool.Pool{{
			Name: "extra-ippool", CIDR: netip.MustParsePrefix("192.168.0.0/20"), BlockSize: 26,
			VXLANMode: pool.Always, NATOutgoing: true, NodeSelector: `type=="test"`,
		}}},
		{"temporary-pool.json", []pool.Pool{{
			Name: "temporary-pool", CIDR: netip.MustParsePrefix("10.0.0.0/16"), IPIPMode: pool.Always, NATOutgoing: true,
		}}},
		{"default-ipv4-ippool-block27.json", []pool.Pool{{
			Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("192.0.0.0/16"), BlockSize: 27,
			IPIPMode: pool.Always, NATOutgoing: true,
		}}},
		{"my-ippool.json", []pool.Pool{{
			Name: "my-ippool", CIDR: netip.MustParsePrefix("192.0.0.0/16"), BlockSize: 24,
			IPIPMode: pool.Always, NATOutgoing: true,
		}}},
		{"rack-ippools.json", []pool.Pool{
			{Name: "rack-0-ippool", CIDR: netip.MustParsePrefix("192.168.0.0/24"), IPIPMode: pool.Always, NATOutgoing: true, NodeSelector: `rack == "0"`},
			{Name: "rack-1-ippool", CIDR: netip.MustParsePrefix("192.168.1.0/24"), IPIPMode: pool.Always, NATOutgoing: true, NodeSelector: `rack == "1"`},
		}},
		{"pool-1.json", []pool.Pool{{
			Name: "pool-1", CIDR: netip.MustParsePrefix("10.21.0.0/31"), BlockSize: 31,
			IPIPMode: pool.Never, NATOutgoing: true,
		}}},
	}
	files, err := filepath.Glob(filepath.Join("testdata", "manifests", "*.json"))
	require.NoError(t, err)
	require.Len(t, files, len(tests)+2, "every seed manifest has a row (plus the two APIv1 ones)")
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got := readManifest(t, tt.file)
			require.Len(t, got, len(tt.want))
			for i := range got {
				require.NoError(t, got[i].Validate())
				require.Equal(t, tt.want[i].WithDefaults(), got[i].WithDefaults())
				require.Equal(t, tt.want[i].Name, got[i].Name)
				require.Equal(t, tt.want[i].CIDR, got[i].CIDR)
				require.Equal(t, tt.want[i].BlockSize, got[i].BlockSize)
				var s pool.Set
				require.NoError(t, s.Add(got[i]))
			}
		})
	}
}

// TestSeedManifestsTogether loads every seed pool into one set, as a
// cluster that followed all the guides would: the overlapping ones are
// refused, naming the pool they overlap.
func TestSeedManifestsTogether(t *testing.T) {
	var s pool.Set
	var errs []string
	for _, f := range []string{"default-ipv4-pool.crd.json", "temporary-pool.json", "my-ippool.json",
		"default-ipv4-ippool-block27.json", "rack-ippools.json", "extra-ippool.json", "pool-1.json"} {
		for _, p := range readManifest(t, f) {
			if err := s.Add(p); err != nil {
				require.ErrorIs(t, err, pool.ErrOverlap)
				errs = append(errs, err.Error())
			}
		}
	}
	require.Equal(t, []string{
		`pool "default-ipv4-ippool": cidr 192.0.0.0/16 overlaps pool "my-ippool" (192.0.0.0/16)`,
		`pool "extra-ippool": cidr 192.168.0.0/20 overlaps pool "rack-0-ippool" (192.168.0.0/24); ` +
			`cidr 192.168.0.0/20 overlaps pool "rack-1-ippool" (192.168.1.0/24)`,
	}, errs)
	var names []string
	for _, p := range s.All() {
		names = append(names, p.Name)
	}
	require.Equal(t, []string{"default-ipv4-pool", "my-ippool", "pool-1", "rack-0-ippool", "rack-1-ippool", "temporary-pool"}, names)
}

func TestDecodeManifestAPIv1Refused(t *testing.T) {
	for _, f := range []string{"ippool-bgp.apiv1.json", "ippool-ipip-always.apiv1.json"} {
		data, err := os.ReadFile(filepath.Join("testdata", "manifests", f))
		require.NoError(t, err)
		_, err = pool.DecodeManifest(data)
		require.EqualError(t, err, "manifest item 1: kind ipPool is Calico APIv1 (Calico 2.x), which carve does not read: "+
			"convert it to projectcalico.org/v3 first (calico-upgrade)")
	}
}

func TestDecodeManifestForms(t *testing.T) {
	one := func(name, cidr string) string {
		return `{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"` + name + `"},"spec":{"cidr":"` + cidr + `"}}`
	}
	tests := []struct {
		name  string
		input string
		want  []string // names
	}{
		{"one pool", one("a", "10.0.0.0/16"), []string{"a"}},
		{"stream", one("a", "10.0.0.0/16") + "\n" + one("b", "10.1.0.0/16"), []string{"a", "b"}},
		{"array", "[" + one("a", "10.0.0.0/16") + "," + one("b", "10.1.0.0/16") + "]", []string{"a", "b"}},
		{"IPPoolList", `{"apiVersion":"projectcalico.org/v3","kind":"IPPoolList","metadata":{"resourceVersion":"1"},"items":[` +
			one("a", "10.0.0.0/16") + `,{"metadata":{"name":"b"},"spec":{"cidr":"10.1.0.0/16"}}]}`, []string{"a", "b"}},
		{"kubectl List", `{"apiVersion":"v1","kind":"List","items":[` + one("a", "10.0.0.0/16") + `]}`, []string{"a"}},
		{"empty list", `{"apiVersion":"crd.projectcalico.org/v1","kind":"IPPoolList","items":[]}`, []string{}},
		{"status and unknown metadata ignored", `{"apiVersion":"crd.projectcalico.org/v1","kind":"IPPool",` +
			`"metadata":{"name":"a","labels":{"x":"y"},"finalizers":["f"]},"spec":{"cidr":"10.0.0.0/16"},"status":{"conditions":[]}}`, []string{"a"}},
		{"no spec", `{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"a"}}`, []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pools, err := pool.DecodeManifest([]byte(tt.input))
			require.NoError(t, err)
			names := []string{}
			for _, p := range pools {
				names = append(names, p.Name)
			}
			require.Equal(t, tt.want, names)
		})
	}
}

func TestDecodeManifestErrors(t *testing.T) {
	const head = `{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"x"},"spec":`
	tests := []struct {
		name, input, want string
	}{
		{"empty", "  ", "manifest item 1: no manifest in the input"},
		{"not JSON", "apiVersion: v3", "manifest item 1: invalid JSON (the input looks like YAML: convert it to JSON first, see DecodeManifest): invalid character 'a' looking for beginning of value"},
		{"truncated", `{"kind":"IPPool"`, "manifest item 1: invalid JSON: unexpected EOF"},
		{"not an object", `"IPPool"`, `manifest item 1: want an object, got "IPPool"`},
		{"no kind", `{"apiVersion":"projectcalico.org/v3"}`, "manifest item 1: kind is missing: want IPPool, IPPoolList or List"},
		{"other kind", `{"apiVersion":"projectcalico.org/v3","kind":"BGPPeer"}`, `manifest item 1: kind "BGPPeer": want IPPool, IPPoolList or List`},
		{"other version", `{"apiVersion":"projectcalico.org/v2","kind":"IPPool","metadata":{"name":"x"}}`,
			`manifest item 1: apiVersion "projectcalico.org/v2": want projectcalico.org/v3 or crd.projectcalico.org/v1`},
		{"no name", `{"apiVersion":"projectcalico.org/v3","kind":"IPPool","spec":{}}`, "manifest item 1: metadata.name is missing"},
		{"empty name", `{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":""}}`, "manifest item 1: metadata.name is missing"},
		{"unknown spec field", head + `{"cidr":"10.0.0.0/16","blocksize":24}}`,
			`manifest item 1 (IPPool "x"): spec.blocksize: is not a field of the IPPool spec`},
		{"case matters", head + `{"CIDR":"10.0.0.0/16"}}`, `manifest item 1 (IPPool "x"): spec.CIDR: is not a field of the IPPool spec`},
		{"duplicate field", head + `{"cidr":"10.0.0.0/16","cidr":"10.1.0.0/16"}}`, `manifest item 1 (IPPool "x"): spec: "cidr": appears twice`},
		{"wrong type", head + `{"blockSize":"26"}}`, `manifest item 1 (IPPool "x"): spec.blockSize: want an integer, got "26"`},
		{"bad cidr", head + `{"cidr":"10.0.0.0/33"}}`, `manifest item 1 (IPPool "x"): spec.cidr: "10.0.0.0/33" is not a CIDR`},
		{"APIv1 ipip field", head + `{"ipip":{"enabled":true}}}`,
			`manifest item 1 (IPPool "x"): spec.ipip: is the Calico APIv1 field, not allowed in v3: use ipipMode`},
		{"APIv1 nat-outgoing field", head + `{"nat-outgoing":true}}`,
			`manifest item 1 (IPPool "x"): spec.nat-outgoing: is the Calico APIv1 field, not allowed in v3: use natOutgoing`},
		{"second item", `[{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"a"}},` + head + `[]}]`,
			`manifest item 2 (IPPool "x"): spec: want an object, got []`},
		{"list in a list", `{"kind":"List","items":[{"kind":"List","items":[]}]}`, "manifest item 1: kind List inside a list: want IPPool"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pools, err := pool.DecodeManifest([]byte(tt.input))
			require.EqualError(t, err, tt.want)
			require.Nil(t, pools)
			var de *pool.DecodeError
			require.ErrorAs(t, err, &de)
		})
	}
}

// TestSpecJSON checks the Pool's own JSON form: the spec of a manifest, with
// Calico's field names, decoding what it encodes.
func TestSpecJSON(t *testing.T) {
	p := pool.Pool{
		Name: "not-encoded", CIDR: netip.MustParsePrefix("fd00::/48"), BlockSize: 122, NodeSelector: `rack == "1"`,
		NamespaceSelector: `team == "a"`, Disabled: true, AllowedUses: []pool.Use{pool.UseWorkload},
		AssignmentMode: pool.Manual, VXLANMode: pool.CrossSubnet, NATOutgoing: true, DisableBGPExport: true,
	}
	data, err := json.Marshal(p)
	require.NoError(t, err)
	require.JSONEq(t, `{"cidr":"fd00::/48","blockSize":122,"nodeSelector":"rack == \"1\"","namespaceSelector":"team == \"a\"",`+
		`"disabled":true,"allowedUses":["Workload"],"assignmentMode":"Manual","vxlanMode":"CrossSubnet","natOutgoing":true,"disableBGPExport":true}`,
		string(data))
	var back pool.Pool
	require.NoError(t, json.Unmarshal(data, &back))
	p.Name = ""
	require.Equal(t, p.WithDefaults(), back.WithDefaults())

	empty, err := json.Marshal(pool.Pool{})
	require.NoError(t, err)
	require.JSONEq(t, `{"cidr":""}`, string(empty))
	bad, err := json.Marshal(pool.Pool{CIDR: netip.PrefixFrom(netip.MustParseAddr("10.0.0.0"), 96)})
	require.NoError(t, err)
	require.JSONEq(t, `{"cidr":""}`, string(bad), "an invalid prefix is written as the empty one")

	// A bare address is a full-length prefix, as in Calico; null is zero.
	var q pool.Pool
	require.NoError(t, json.Unmarshal([]byte(`{"cidr":"10.0.0.7","blockSize":null,"ipipMode":null,"nat-outgoing":false}`), &q))
	require.Equal(t, netip.MustParsePrefix("10.0.0.7/32"), q.CIDR)
	require.NoError(t, json.Unmarshal([]byte(`{"cidr":"fd00::7"}`), &q))
	require.Equal(t, netip.MustParsePrefix("fd00::7/128"), q.CIDR)
	require.Error(t, json.Unmarshal([]byte(`{"cidr":"fe80::1%eth0"}`), &q))

	// Host bits survive decoding, so that validation reports them.
	require.NoError(t, json.Unmarshal([]byte(`{"cidr":"10.0.0.1/24"}`), &q))
	q.Name = "extra"
	require.EqualError(t, q.Validate(), `pool "extra": cidr 10.0.0.1/24 is not masked`)
}

func TestDecodeManifestHintsAtYAML(t *testing.T) {
	_, err := pool.DecodeManifest([]byte("apiVersion: projectcalico.org/v3\nkind: IPPool\n"))
	require.ErrorContains(t, err, "looks like YAML")
	_, err = pool.DecodeManifest([]byte(`{"apiVersion": `))
	require.Error(t, err)
	require.NotContains(t, err.Error(), "YAML")
}
