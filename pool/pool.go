package pool

import (
	"fmt"
	"net/netip"
	"slices"
)

// Use is what addresses from a pool may be used for (Calico's
// IPPoolAllowedUse). In a [Request] the zero Use means [UseWorkload]; in a
// pool's AllowedUses it is invalid.
type Use string

// The uses Calico knows.
const (
	UseWorkload     Use = "Workload"     // pod, VM or container addresses
	UseTunnel       Use = "Tunnel"       // IPIP, VXLAN and WireGuard tunnel addresses of nodes
	UseLoadBalancer Use = "LoadBalancer" // addresses of LoadBalancer services
)

// orDefault returns u, or UseWorkload for the zero Use.
func (u Use) orDefault() Use {
	if u == "" {
		return UseWorkload
	}
	return u
}

// AssignmentMode says whether a pool is chosen automatically or only when a
// request names it. The zero value means [Automatic].
type AssignmentMode string

// The assignment modes.
const (
	Automatic AssignmentMode = "Automatic" // the pool is chosen by its selectors
	Manual    AssignmentMode = "Manual"    // the pool is used only when a request names it
)

// EncapMode is an IPIP or VXLAN encapsulation mode. The zero value means
// [Never].
type EncapMode string

// The encapsulation modes.
const (
	Never       EncapMode = "Never"       // no encapsulation
	Always      EncapMode = "Always"      // encapsulate all traffic between nodes
	CrossSubnet EncapMode = "CrossSubnet" // encapsulate only traffic that crosses a subnet boundary
)

// Enabled reports whether m turns encapsulation on (Always or CrossSubnet).
func (m EncapMode) Enabled() bool { return m == Always || m == CrossSubnet }

// Family is an IP address family. The zero Family is "unspecified": a
// [Request] with it accepts pools of both families, and [Pool.Family]
// returns it for a pool without a valid CIDR.
type Family int

// The address families, numbered like Calico's IP versions.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// String returns "IPv4", "IPv6" or, for any other value, "any".
func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return "any"
}

// Default block sizes, as in Calico.
const (
	DefaultBlockSize4 = 26  // 64 addresses per block
	DefaultBlockSize6 = 122 // 64 addresses per block
)

// Allowed block sizes, as in Calico.
const (
	MinBlockSize4 = 20
	MaxBlockSize4 = 32
	MinBlockSize6 = 116
	MaxBlockSize6 = 128
)

// DefaultNodeSelector is the node selector of a pool that does not set one:
// it selects every node.
const DefaultNodeSelector = "all()"

// Pool is an IP pool: Calico's IPPool spec plus its name. The JSON field
// names are Calico's, so the spec of an IPPool manifest decodes into a Pool
// directly (see [Pool.UnmarshalJSON] and [DecodeManifest]).
//
// Every zero field means Calico's default; [Pool.WithDefaults] fills them in.
// The methods that read a pool (Family, Allows, BlockFor, Walk, ...) treat a
// zero field as its default too, so a Pool works with or without defaults
// applied.
//
// A Pool also keeps its parsed selectors (filled by WithDefaults and by
// Set), so reflect.DeepEqual, and testify's Equal, see two pools with the
// same fields as different when only one of them has been through
// WithDefaults; compare both after WithDefaults, or field by field. A pool
// read from the ipam package also has a Version, which a pool decoded from
// a manifest lacks: set it aside to compare specs.
type Pool struct {
	// Name identifies the pool (metadata.name in a manifest). It must be a
	// DNS subdomain: lowercase letters, digits, '-' and '.'.
	Name string `json:"-"`
	// Version identifies one stored version of the pool, as
	// metadata.resourceVersion does in Calico. The ipam package sets it on
	// every pool it returns and gives the pool a new one with every
	// change, never the same one twice (not even after a deletion; unless
	// the store itself is rolled back, to an older snapshot say), and
	// [github.com/carve-ipam/carve/ipam.Allocator.UpdatePool] with a
	// non-zero Version changes the pool only if it is still that version.
	// Versions are numbered across the pools (a write that changes any
	// pool takes the next number), so the difference between two says
	// nothing of how often one pool changed. Zero means no check.
	// Validation ignores it, and manifests do not carry it.
	Version uint64 `json:"-"`
	// CIDR is the pool's address range. It must be masked (no host bits set).
	CIDR netip.Prefix `json:"cidr"`
	// BlockSize is the prefix length of the blocks the pool is carved into:
	// 20..32 for IPv4 (default 26), 116..128 for IPv6 (default 122).
	BlockSize int `json:"blockSize,omitempty"`
	// NodeSelector chooses the nodes that may take blocks from the pool, in
	// Calico's selector language. Empty means all().
	NodeSelector string `json:"nodeSelector,omitempty"`
	// NamespaceSelector chooses the namespaces whose workloads may use the
	// pool. Empty means every namespace.
	NamespaceSelector string `json:"namespaceSelector,omitempty"`
	// Disabled stops new assignments from the pool; addresses already
	// assigned stay until released.
	Disabled bool `json:"disabled,omitempty"`
	// AllowedUses lists what the pool's addresses may be used for. Empty
	// means Workload and Tunnel.
	AllowedUses []Use `json:"allowedUses,omitempty"`
	// AssignmentMode is Automatic (the default: the pool is chosen by its
	// selectors) or Manual (only requests that name the pool use it).
	AssignmentMode AssignmentMode `json:"assignmentMode,omitempty"`
	// IPIPMode is the IPIP encapsulation mode (default Never). IPv4 only.
	IPIPMode EncapMode `json:"ipipMode,omitempty"`
	// VXLANMode is the VXLAN encapsulation mode (default Never).
	VXLANMode EncapMode `json:"vxlanMode,omitempty"`
	// NATOutgoing masquerades traffic from the pool to destinations outside
	// all pools. carve stores it for the network layer and does not use it.
	NATOutgoing bool `json:"natOutgoing,omitempty"`
	// DisableBGPExport stops the pool's routes from being exported over BGP.
	// carve stores it for the network layer and does not use it.
	DisableBGPExport bool `json:"disableBGPExport,omitempty"`

	// sel caches the parsed selectors (see selectors.go). WithDefaults and
	// Set fill it; it is ignored when the selector texts have changed since.
	sel compiled
}

// String formats the pool's fields as %+v would, without the parsed
// selectors it caches, which would print as pointers: a pool prints the
// same whether or not it has been through WithDefaults or a Set.
func (p Pool) String() string {
	return fmt.Sprintf("%+v", poolFields{p.Name, p.Version, p.CIDR, p.BlockSize, p.NodeSelector, p.NamespaceSelector, p.Disabled,
		p.AllowedUses, p.AssignmentMode, p.IPIPMode, p.VXLANMode, p.NATOutgoing, p.DisableBGPExport})
}

// poolFields is Pool's exported fields, for String.
type poolFields struct {
	Name              string
	Version           uint64
	CIDR              netip.Prefix
	BlockSize         int
	NodeSelector      string
	NamespaceSelector string
	Disabled          bool
	AllowedUses       []Use
	AssignmentMode    AssignmentMode
	IPIPMode          EncapMode
	VXLANMode         EncapMode
	NATOutgoing       bool
	DisableBGPExport  bool
}

// defaultUses is the AllowedUses of a pool that does not set any.
var defaultUses = []Use{UseWorkload, UseTunnel}

// WithDefaults returns a copy of p with every zero field that has a default
// filled in: BlockSize (26 or 122 by the CIDR's family; left zero when the
// CIDR is invalid), NodeSelector all(), AllowedUses Workload and Tunnel,
// AssignmentMode Automatic, IPIPMode and VXLANMode Never. It also parses the
// selectors and keeps them with the result, so that selecting with it does
// not parse them again. AllowedUses of the result never shares memory with p.
func (p Pool) WithDefaults() Pool {
	if p.BlockSize == 0 {
		p.BlockSize = defaultBlockSize(p.Family())
	}
	if p.NodeSelector == "" {
		p.NodeSelector = DefaultNodeSelector
	}
	if len(p.AllowedUses) == 0 {
		p.AllowedUses = slices.Clone(defaultUses)
	} else {
		p.AllowedUses = slices.Clone(p.AllowedUses)
	}
	if p.AssignmentMode == "" {
		p.AssignmentMode = Automatic
	}
	if p.IPIPMode == "" {
		p.IPIPMode = Never
	}
	if p.VXLANMode == "" {
		p.VXLANMode = Never
	}
	p.sel = compile(p.NodeSelector, p.NamespaceSelector)
	return p
}

func defaultBlockSize(f Family) int {
	switch f {
	case IPv4:
		return DefaultBlockSize4
	case IPv6:
		return DefaultBlockSize6
	}
	return 0
}

// Family returns the address family of p's CIDR, or the zero Family when
// the CIDR is invalid.
func (p *Pool) Family() Family {
	switch {
	case !p.CIDR.IsValid():
		return 0
	case p.CIDR.Addr().Is4():
		return IPv4
	}
	return IPv6
}

// Allows reports whether p's addresses may be used for u. The zero Use means
// Workload, and an empty AllowedUses means Workload and Tunnel.
func (p *Pool) Allows(u Use) bool {
	u = u.orDefault()
	if len(p.AllowedUses) == 0 {
		return u == UseWorkload || u == UseTunnel
	}
	return slices.Contains(p.AllowedUses, u)
}

// effectiveUses returns AllowedUses, or the default when it is empty.
func (p *Pool) effectiveUses() []Use {
	if len(p.AllowedUses) == 0 {
		return defaultUses
	}
	return p.AllowedUses
}

// Manual reports whether p is used only when a request names it.
func (p *Pool) Manual() bool { return p.AssignmentMode == Manual }

// isLoadBalancer reports whether p is a LoadBalancer pool.
func (p *Pool) isLoadBalancer() bool { return slices.Contains(p.AllowedUses, UseLoadBalancer) }

// blockSize returns p's block size, the family default when BlockSize is
// zero.
func (p *Pool) blockSize() int {
	if p.BlockSize == 0 {
		return defaultBlockSize(p.Family())
	}
	return p.BlockSize
}
