package pool

import (
	"fmt"
	"net/netip"
	"strconv"
)

// Link-local ranges no pool may overlap (Calico rejects them too: the
// kernel and cloud metadata services own these addresses).
var (
	linkLocal4 = netip.MustParsePrefix("169.254.0.0/16")
	linkLocal6 = netip.MustParsePrefix("fe80::/10")
)

// mapped6 is the IPv4-mapped IPv6 range. Its addresses are IPv4 addresses
// written in IPv6 form, and the ipam package unmaps every address it is
// given, so no IPv6 pool may hold them: an address handed out from such a
// pool could never be found, released or told from an IPv4 pool's.
var mapped6 = netip.MustParsePrefix("::ffff:0:0/96")

// Validate reports every problem with p at once, as a *ValidationError, or
// nil. Zero fields count as their defaults (see [Pool.WithDefaults]). The
// rules are listed in the package documentation; overlap with other pools
// is checked by [Set.Add], which sees them.
func (p Pool) Validate() error {
	ps := problems{pool: p.Name}
	validate(&ps, &p)
	return ps.err()
}

// ValidateUpdate reports every problem with replacing old by updated: the
// name, cidr and blockSize must stay the same (zero blockSize counting as
// the default), a LoadBalancer pool must stay a LoadBalancer pool, and
// updated must pass [Pool.Validate]. All problems come in one
// *ValidationError.
func ValidateUpdate(old, updated Pool) error {
	ps := problems{pool: updated.Name, update: true}
	validateUpdate(&ps, &old, &updated)
	validate(&ps, &updated)
	return ps.err()
}

func validateUpdate(ps *problems, old, updated *Pool) {
	if updated.Name != old.Name {
		ps.add(ErrImmutable, "name", strconv.Quote(updated.Name), "cannot change (was "+strconv.Quote(old.Name)+")")
	}
	if updated.CIDR != old.CIDR {
		ps.add(ErrImmutable, "cidr", prefixText(updated.CIDR), "cannot change (was "+prefixText(old.CIDR)+")")
	}
	if ob, nb := old.blockSize(), updated.blockSize(); ob != nb {
		ps.add(ErrImmutable, "blockSize", strconv.Itoa(nb), "cannot change (was "+strconv.Itoa(ob)+")")
	}
	if old.isLoadBalancer() && !onlyLoadBalancer(updated.AllowedUses) {
		ps.add(ErrImmutable, "allowedUses", usesText(updated.effectiveUses()),
			"must stay [LoadBalancer]: a LoadBalancer pool cannot become another kind")
	}
}

// validate appends p's problems to ps, rule by rule in the order of the
// package documentation.
func validate(ps *problems, p *Pool) {
	validateName(ps, p.Name)
	fam := validateCIDR(ps, p)
	validateBlockSize(ps, p, fam)
	validateSelectors(ps, p)
	validateUses(ps, p)
	validateEncap(ps, p, fam)
	switch p.AssignmentMode {
	case "", Automatic, Manual:
	default:
		ps.add(ErrAssignmentMode, "assignmentMode", string(p.AssignmentMode), "is not Automatic or Manual")
	}
}

// validateName checks that name is a DNS subdomain (RFC 1123), which is
// what Kubernetes and Calico require of a resource name: at most 253
// characters, dot-separated labels of lowercase letters, digits and '-',
// each starting and ending with a letter or digit.
func validateName(ps *problems, name string) {
	if name == "" {
		ps.add(ErrName, "name", "", "is required")
		return
	}
	if !isDNSSubdomain(name) {
		ps.add(ErrName, "name", strconv.Quote(name),
			"is not a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)")
	}
}

func isDNSSubdomain(s string) bool {
	if len(s) > 253 {
		return false
	}
	label := 0 // length of the current label
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9':
			label++
		case c == '-':
			if label == 0 || i == len(s)-1 || s[i+1] == '.' {
				return false
			}
			label++
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		default:
			return false
		}
	}
	return label > 0
}

// validateCIDR checks the cidr and returns its family (zero if invalid).
func validateCIDR(ps *problems, p *Pool) Family {
	c := p.CIDR
	if !c.IsValid() {
		if c.Addr().IsValid() { // netip.PrefixFrom with a length out of range
			ps.add(ErrCIDR, "cidr", c.Addr().String(), fmt.Sprintf("has a prefix length outside 0..%d", c.Addr().BitLen()))
			return 0
		}
		ps.add(ErrCIDR, "cidr", "", "is required")
		return 0
	}
	if c.Addr().Is4In6() {
		ps.add(ErrCIDR, "cidr", c.String(), "is an IPv4-mapped IPv6 prefix; write IPv4 pools in IPv4 form")
		return 0
	}
	if c != c.Masked() {
		ps.add(ErrCIDR, "cidr", c.String(), "is not masked")
	}
	fam := p.Family()
	if fam == IPv6 && c.Overlaps(mapped6) {
		ps.add(ErrCIDR, "cidr", c.String(), "holds the IPv4-mapped range "+mapped6.String()+", whose addresses are IPv4 addresses")
	}
	ll := linkLocal4
	if fam == IPv6 {
		ll = linkLocal6
	}
	if c.Overlaps(ll) {
		ps.add(ErrLinkLocal, "cidr", c.String(), "overlaps the "+fam.String()+" link-local range "+ll.String())
	}
	return fam
}

func validateBlockSize(ps *problems, p *Pool, fam Family) {
	if fam == 0 {
		// Without a family there is no range to check against; the cidr
		// problem has been reported.
		return
	}
	lo, hi := MinBlockSize4, MaxBlockSize4
	if fam == IPv6 {
		lo, hi = MinBlockSize6, MaxBlockSize6
	}
	bs := p.blockSize()
	if bs < lo || bs > hi {
		ps.add(ErrBlockSize, "blockSize", strconv.Itoa(bs), fmt.Sprintf("is outside %d..%d (%s)", lo, hi, fam))
		return
	}
	if !p.Disabled && p.CIDR.Bits() > bs {
		fix := fmt.Sprintf("an enabled one needs blockSize %d or more", p.CIDR.Bits())
		if ps.update {
			fix = fmt.Sprintf("and blockSize cannot change: to use the range, delete the pool and create one with blockSize %d or more", p.CIDR.Bits())
		}
		ps.add(ErrBlockSize, "cidr", p.CIDR.String(),
			fmt.Sprintf("is smaller than one block (blockSize %d); only a disabled pool may be, %s", bs, fix))
	}
}

func validateUses(ps *problems, p *Pool) {
	lb := false
	for _, u := range p.AllowedUses {
		switch u {
		case UseWorkload, UseTunnel:
		case UseLoadBalancer:
			lb = true
		default:
			ps.add(ErrAllowedUses, "allowedUses", strconv.Quote(string(u)), "is not Workload, Tunnel or LoadBalancer")
		}
	}
	if !lb {
		return
	}
	if !onlyLoadBalancer(p.AllowedUses) {
		ps.add(ErrLoadBalancer, "allowedUses", usesText(p.AllowedUses), "mixes LoadBalancer with other uses")
	}
	if !p.selectsAllNodes() {
		ps.add(ErrLoadBalancer, "nodeSelector", strconv.Quote(p.NodeSelector), "must be all() in a LoadBalancer pool")
	}
	if p.IPIPMode.Enabled() {
		ps.add(ErrLoadBalancer, "ipipMode", string(p.IPIPMode), "is not allowed in a LoadBalancer pool")
	}
	if p.VXLANMode.Enabled() {
		ps.add(ErrLoadBalancer, "vxlanMode", string(p.VXLANMode), "is not allowed in a LoadBalancer pool")
	}
	if p.DisableBGPExport {
		ps.add(ErrLoadBalancer, "disableBGPExport", "true", "is not allowed in a LoadBalancer pool")
	}
}

func validateEncap(ps *problems, p *Pool, fam Family) {
	okIPIP := validMode(ps, "ipipMode", p.IPIPMode)
	okVXLAN := validMode(ps, "vxlanMode", p.VXLANMode)
	if okIPIP && fam == IPv6 && p.IPIPMode.Enabled() {
		ps.add(ErrEncapsulation, "ipipMode", string(p.IPIPMode), "is not supported on IPv6")
	}
	if okIPIP && okVXLAN && p.IPIPMode.Enabled() && p.VXLANMode.Enabled() {
		ps.add(ErrEncapsulation, "vxlanMode", string(p.VXLANMode),
			"cannot be enabled together with ipipMode "+string(p.IPIPMode))
	}
}

func validMode(ps *problems, field string, m EncapMode) bool {
	switch m {
	case "", Never, Always, CrossSubnet:
		return true
	}
	ps.add(ErrEncapsulation, field, strconv.Quote(string(m)), "is not Never, Always or CrossSubnet")
	return false
}

// onlyLoadBalancer reports whether uses is non-empty and holds nothing but
// LoadBalancer.
func onlyLoadBalancer(uses []Use) bool {
	if len(uses) == 0 {
		return false
	}
	for _, u := range uses {
		if u != UseLoadBalancer {
			return false
		}
	}
	return true
}

func usesText(uses []Use) string { return fmt.Sprint(uses) }

// prefixText prints a prefix, the zero one as "none".
func prefixText(p netip.Prefix) string {
	if !p.IsValid() {
		return "none"
	}
	return p.String()
}
