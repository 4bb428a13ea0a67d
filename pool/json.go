package pool

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
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

// UnmarshalJSON decodes the spec of a Calico IPPool into p, leaving Name
// alone. Field names are matched exactly (Calico's are case-sensitive). A
// field that Calico's IPPool spec does not have is an error, not ignored: a
// misspelt "blocksize" would otherwise silently give the default block size,
// and a pool's block size can never be changed afterwards. So are the APIv1
// fields "ipip" and "nat-outgoing", which Calico rejects too. A null field
// leaves the zero value. As in Calico, cidr may be a bare address, meaning
// a single-address prefix. The decoded pool is not validated.
func (p *Pool) UnmarshalJSON(data []byte) error {
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		return nil
	}
	fields, err := objectFields(data)
	if err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	q := Pool{Name: p.Name}
	for _, f := range fields {
		if err := q.setField(f.key, f.value); err != nil {
			return fmt.Errorf("spec.%s: %w", f.key, err)
		}
	}
	*p = q
	return nil
}

func (p *Pool) setField(key string, v json.RawMessage) error {
	if isNull(v) {
		return nil
	}
	switch key {
	case "cidr":
		var s string
		if err := decodeAs(v, &s, "a string"); err != nil {
			return err
		}
		c, err := parseCIDR(s)
		if err != nil {
			return err
		}
		p.CIDR = c
	case "blockSize":
		return decodeAs(v, &p.BlockSize, "an integer")
	case "nodeSelector":
		return decodeAs(v, &p.NodeSelector, "a string")
	case "namespaceSelector":
		return decodeAs(v, &p.NamespaceSelector, "a string")
	case "disabled":
		return decodeAs(v, &p.Disabled, "true or false")
	case "allowedUses":
		return decodeAs(v, &p.AllowedUses, "a list of strings")
	case "assignmentMode":
		return decodeAs(v, &p.AssignmentMode, "a string")
	case "ipipMode":
		return decodeAs(v, &p.IPIPMode, "a string")
	case "vxlanMode":
		return decodeAs(v, &p.VXLANMode, "a string")
	case "natOutgoing":
		return decodeAs(v, &p.NATOutgoing, "true or false")
	case "disableBGPExport":
		return decodeAs(v, &p.DisableBGPExport, "true or false")
	case "ipip":
		return errors.New("is the Calico APIv1 field, not allowed in v3: use ipipMode")
	case "nat-outgoing":
		if string(bytes.TrimSpace(v)) == "false" {
			return nil
		}
		return errors.New("is the Calico APIv1 field, not allowed in v3: use natOutgoing")
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

func decodeAs(v json.RawMessage, dst any, want string) error {
	if err := json.Unmarshal(v, dst); err != nil {
		return fmt.Errorf("want %s, got %s", want, abbrev(v))
	}
	return nil
}

func isNull(v json.RawMessage) bool { return string(bytes.TrimSpace(v)) == "null" }

// abbrev shortens a JSON value for an error message.
func abbrev(v json.RawMessage) string {
	s := string(bytes.TrimSpace(v))
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return s
}

type field struct {
	key   string
	value json.RawMessage
}

// objectFields splits a JSON object into its members, in order, with keys
// matched exactly (encoding/json would match them case-insensitively) and
// duplicate keys refused (Kubernetes' strict decoding refuses them too).
func objectFields(data []byte) ([]field, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, syntaxErr(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("want an object, got %s", abbrev(data))
	}
	var fields []field
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, syntaxErr(err)
		}
		key, _ := tok.(string) // inside an object the decoder only returns string keys
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, syntaxErr(err)
		}
		for _, f := range fields {
			if f.key == key {
				return nil, fmt.Errorf("%s: appears twice", strconv.Quote(key))
			}
		}
		fields = append(fields, field{key, v})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, syntaxErr(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("invalid JSON: data after the object")
	}
	return fields, nil
}

func syntaxErr(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("invalid JSON: %w", err)
}
