package pool

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/carve-ipam/carve/internal/strictjson"
)

// MarshalJSON encodes p as the spec of a Calico IPPool, without the name.
// It is the encoding the struct tags describe, except that a CIDR that is
// not a valid prefix (such as netip.PrefixFrom with a bad length) is
// written as "", which decodes back to the zero Prefix.
func (p Pool) MarshalJSON() ([]byte, error) {
	type plain Pool // the same fields, without this method
	cidr := ""
	if p.CIDR.IsValid() {
		cidr = p.CIDR.String()
	}
	return json.Marshal(struct {
		CIDR string `json:"cidr"` // shadows the embedded CIDR
		plain
	}{cidr, plain(p)})
}

// UnmarshalJSON decodes the spec of a Calico IPPool into p, leaving what
// is not spec alone: Name, and Version, so that a pool read from the store
// with a new spec decoded into it still updates only the version read.
// Field names are matched exactly (Calico's are case-sensitive). A
// field that Calico's IPPool spec does not have is an error, not ignored: a
// misspelt "blocksize" would otherwise silently give the default block size,
// and a pool's block size can never be changed afterwards. So are the APIv1
// fields "ipip" and "nat-outgoing", which Calico rejects too (only the
// crd.projectcalico.org/v1 form of a pool may hold them: see
// [DecodeManifest]). A null field
// leaves the zero value. As in Calico, cidr may be a bare address, meaning
// a single-address prefix. The decoded pool is not validated.
func (p *Pool) UnmarshalJSON(data []byte) error { return p.unmarshalSpec(data, false) }

// unmarshalSpec is UnmarshalJSON; with crd, the spec is that of a
// crd.projectcalico.org/v1 IPPool, whose APIv1 fields "ipip" and
// "nat-outgoing" (kept by pools created under Calico 2.x on the Kubernetes
// datastore) are read as Calico's KDD backend reads them: ipip decides
// ipipMode, and nat-outgoing is ORed into natOutgoing.
func (p *Pool) unmarshalSpec(data []byte, crd bool) error {
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		return nil
	}
	fields, err := strictjson.Fields(data)
	if err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	q := Pool{Name: p.Name, Version: p.Version}
	var v1IPIP EncapMode // ipipMode from the APIv1 ipip field, if set
	v1NAT := false
	for _, f := range fields {
		var err error
		switch {
		case crd && f.Key == "ipip":
			var sub string
			if v1IPIP, sub, err = decodeV1IPIP(f.Value); err != nil {
				return fmt.Errorf("spec.ipip%s: %w", sub, err)
			}
		case crd && f.Key == "nat-outgoing":
			if !strictjson.IsNull(f.Value) {
				err = strictjson.DecodeAs(f.Value, &v1NAT, "true or false")
			}
		default:
			err = q.setField(f.Key, f.Value)
		}
		if err != nil {
			return fmt.Errorf("spec.%s: %w", f.Key, err)
		}
	}
	if v1IPIP != "" {
		q.IPIPMode = v1IPIP
	}
	q.NATOutgoing = q.NATOutgoing || v1NAT
	*p = q
	return nil
}

// decodeV1IPIP reads the APIv1 ipip setting {enabled, mode} and returns the
// ipipMode it means, or "" for null. On failure it also returns the path of
// the member at fault (".mode"), or "" for the setting as a whole.
func decodeV1IPIP(v json.RawMessage) (EncapMode, string, error) {
	if strictjson.IsNull(v) {
		return "", "", nil
	}
	fields, err := strictjson.Fields(v)
	if err != nil {
		return "", "", err
	}
	enabled, mode := false, ""
	for _, f := range fields {
		switch f.Key {
		case "enabled":
			err = strictjson.DecodeAs(f.Value, &enabled, "true or false")
		case "mode":
			err = strictjson.DecodeAs(f.Value, &mode, "a string")
		default:
			err = errors.New("is not a field of the APIv1 ipip setting")
		}
		if err != nil {
			return "", "." + f.Key, err
		}
	}
	switch {
	case mode != "" && mode != "always" && mode != "cross-subnet":
		return "", ".mode", fmt.Errorf("%q is not always or cross-subnet", mode)
	case !enabled:
		return Never, "", nil
	case mode == "cross-subnet":
		return CrossSubnet, "", nil
	}
	return Always, "", nil
}

func (p *Pool) setField(key string, v json.RawMessage) error {
	if strictjson.IsNull(v) {
		return nil
	}
	switch key {
	case "cidr":
		var s string
		if err := strictjson.DecodeAs(v, &s, "a string"); err != nil {
			return err
		}
		c, err := parseCIDR(s)
		if err != nil {
			return err
		}
		p.CIDR = c
	case "blockSize":
		return strictjson.DecodeAs(v, &p.BlockSize, "an integer")
	case "nodeSelector":
		return strictjson.DecodeAs(v, &p.NodeSelector, "a string")
	case "namespaceSelector":
		return strictjson.DecodeAs(v, &p.NamespaceSelector, "a string")
	case "disabled":
		return strictjson.DecodeAs(v, &p.Disabled, "true or false")
	case "allowedUses":
		return strictjson.DecodeAs(v, &p.AllowedUses, "a list of strings")
	case "assignmentMode":
		return strictjson.DecodeAs(v, &p.AssignmentMode, "a string")
	case "ipipMode":
		return strictjson.DecodeAs(v, &p.IPIPMode, "a string")
	case "vxlanMode":
		return strictjson.DecodeAs(v, &p.VXLANMode, "a string")
	case "natOutgoing":
		return strictjson.DecodeAs(v, &p.NATOutgoing, "true or false")
	case "disableBGPExport":
		return strictjson.DecodeAs(v, &p.DisableBGPExport, "true or false")
	case "ipip":
		return errors.New("is the Calico APIv1 field, not allowed in v3: use ipipMode")
	case "nat-outgoing":
		if string(bytes.TrimSpace(v)) == "false" {
			return nil
		}
		return errors.New("is the Calico APIv1 field, not allowed in v3: use natOutgoing")
	case "awsSubnetID":
		return errors.New("is a field of Calico's IPPool spec (pools backed by an AWS subnet) that carve does not support: carve would not keep the pool's addresses to the subnet's hosts")
	default:
		return errors.New("is not a field of the IPPool spec")
	}
	return nil
}

// parseCIDR parses a prefix, or a bare address as a full-length prefix.
// Host bits are kept so that validation can report them.
func parseCIDR(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	if c, err := netip.ParsePrefix(s); err == nil {
		return c, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
