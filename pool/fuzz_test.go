package pool_test

import (
	"encoding/json"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/carve-ipam/carve/pool"
)

// FuzzDecodeManifest: decoding never panics; whatever decodes validates,
// carves and plans without panicking, survives a JSON round trip of its
// spec, and a pool that validates is accepted by an empty set.
func FuzzDecodeManifest(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "manifests", "*.json"))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`[{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"a"},"spec":{"cidr":"10.0.0.7"}}]`))
	f.Add([]byte(`{"apiVersion":"crd.projectcalico.org/v1","kind":"IPPoolList","items":[{"metadata":{"name":"b"},` +
		`"spec":{"cidr":"fd00::/48","allowedUses":["LoadBalancer"],"nodeSelector":"all()"}}]}`))
	f.Add([]byte(`{"kind":"List","items":[{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"c"},` +
		`"spec":{"cidr":"10.0.0.1/24","blockSize":33,"ipipMode":"Always","vxlanMode":"Always","nodeSelector":"global()"}}]}`))
	f.Add([]byte(`{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"d"},"spec":{"cidr":"::/0","blockSize":128}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		pools, err := pool.DecodeManifest(data)
		if err != nil {
			if pools != nil {
				t.Fatalf("pools %v with error %v", pools, err)
			}
			if !strings.HasPrefix(err.Error(), "manifest item ") {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		for _, p := range pools {
			checkPool(t, p)
		}
	})
}

// FuzzValidate builds pools from arbitrary field values, including ones no
// decoder would produce, and checks the same properties.
func FuzzValidate(f *testing.F) {
	f.Add("extra", []byte{10, 0, 0, 1}, 24, 0, `rack == "1"`, "", "Workload,Tunnel", "Never", "Always", "Automatic", uint8(0))
	f.Add("lb", []byte{10, 96, 0, 0}, 16, 26, "all()", "", "LoadBalancer", "", "", "", uint8(4))
	f.Add("six", []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 48, 122, "", `team == "a"`, "", "Always", "", "Manual", uint8(1))
	f.Add("", []byte{}, 0, 0, "(", "global()", "x,,y", "on", "off", "sometimes", uint8(255))
	f.Add("mapped", []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 0}, 104, 122, "", "", "", "", "", "", uint8(0))
	f.Fuzz(func(t *testing.T, name string, addr []byte, bits, blockSize int, nodeSel, nsSel, uses, ipip, vxlan, mode string, flags uint8) {
		if len(name)+len(nodeSel)+len(nsSel)+len(uses) > 4096 {
			return
		}
		p := pool.Pool{
			Name: name, BlockSize: blockSize, NodeSelector: nodeSel, NamespaceSelector: nsSel,
			Disabled: flags&1 != 0, NATOutgoing: flags&2 != 0, DisableBGPExport: flags&4 != 0,
			IPIPMode: pool.EncapMode(ipip), VXLANMode: pool.EncapMode(vxlan), AssignmentMode: pool.AssignmentMode(mode),
		}
		if a, ok := netip.AddrFromSlice(addr); ok {
			p.CIDR = netip.PrefixFrom(a, bits)
		}
		if uses != "" {
			for _, u := range strings.Split(uses, ",") {
				p.AllowedUses = append(p.AllowedUses, pool.Use(u))
			}
		}
		checkPool(t, p)
	})
}

// checkPool runs everything that takes a pool and checks the properties
// that must hold for any pool.
func checkPool(t *testing.T, p pool.Pool) {
	err := p.Validate()
	d := p.WithDefaults()
	if err2 := d.Validate(); (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
		t.Fatalf("Validate %v, with defaults %v", err, err2)
	}
	if err != nil && !strings.HasPrefix(err.Error(), "pool ") {
		t.Fatalf("error does not name the pool: %v", err)
	}

	var s pool.Set
	addErr := s.Add(p)
	if (err == nil) != (addErr == nil) {
		t.Fatalf("Validate %v but Add to an empty set %v", err, addErr)
	}
	if addErr == nil {
		if err := s.Update(p); err != nil {
			t.Fatalf("Update with itself: %v", err)
		}
		got, ok := s.ByAddr(p.CIDR.Addr())
		if !ok || got.Name != p.Name {
			t.Fatalf("ByAddr(%s) = %v, %v", p.CIDR.Addr(), got, ok)
		}
		_, _ = s.Select(pool.Request{Node: "n"})
	}

	// The spec survives a JSON round trip, unless a string held invalid
	// UTF-8 (encoding/json writes it as \ufffd); from the second trip on,
	// always.
	data := marshal(t, p)
	back := unmarshal(t, data, p.Name)
	again := marshal(t, back)
	if string(marshal(t, unmarshal(t, again, p.Name))) != string(again) {
		t.Fatalf("second round trip changed %s", again)
	}
	if !strings.Contains(string(data), `\ufffd`) && string(again) != string(data) {
		t.Fatalf("round trip: %s became %s", data, again)
	}

	// Carving is total and consistent.
	n := p.NumBlocks()
	i := 0
	for b := range p.Walk("node", nil) {
		if !p.CIDR.Masked().Contains(b.Addr()) {
			t.Fatalf("walk left the pool: %s", b)
		}
		got, ok := p.BlockFor(b.Addr())
		if !ok || got != b {
			t.Fatalf("BlockFor(%s) = %s, %v", b.Addr(), got, ok)
		}
		if i++; i == 3 {
			break
		}
	}
	if n.Sign() > 0 && i == 0 {
		t.Fatalf("%s blocks but the walk yields none", n)
	}
	if n.Sign() > 0 {
		last, ok := p.BlockAt(new(big.Int).Sub(n, big.NewInt(1)))
		if !ok || !p.CIDR.Masked().Contains(last.Addr()) {
			t.Fatalf("last block %s, %v", last, ok)
		}
	}
	_, _ = pool.Plan(p, 100, 110)
	p.SelectsNode("n", nil)
	p.SelectsNamespace(nil)
}

func marshal(t *testing.T, p pool.Pool) []byte {
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func unmarshal(t *testing.T, data []byte, name string) pool.Pool {
	p := pool.Pool{Name: name}
	if err := json.Unmarshal(data, &p); err != nil {
		t.Fatalf("decoding %s: %v", data, err)
	}
	if p.Name != name {
		t.Fatalf("decoding changed the name to %q", p.Name)
	}
	return p
}
