package pool

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/carve-ipam/carve/internal/strictjson"
)

// API versions whose IPPool manifests DecodeManifest reads. Both have the
// same spec, except that a crd.projectcalico.org/v1 spec may also hold the
// APIv1 fields ipip and nat-outgoing (see [DecodeManifest]).
const (
	APIVersionV3  = "projectcalico.org/v3"     // calicoctl and the Calico API server
	APIVersionCRD = "crd.projectcalico.org/v1" // the CRDs behind the Kubernetes datastore
)

// DecodeError reports a manifest document DecodeManifest could not read.
type DecodeError struct {
	Item int    // 1-based position of the document among the IPPools of the input
	Name string // metadata.name, when it was read
	Err  error  // what is wrong
}

// Error returns, for example,
//
//	manifest item 2 (IPPool "extra"): spec.blocksize: is not a field of the IPPool spec
func (e *DecodeError) Error() string {
	s := "manifest item " + strconv.Itoa(e.Item)
	if e.Name != "" {
		s += " (IPPool " + strconv.Quote(e.Name) + ")"
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns e.Err.
func (e *DecodeError) Unwrap() error { return e.Err }

// DecodeManifest reads IPPool manifests in JSON and returns their pools, in
// input order, as written: defaults are not applied and nothing is
// validated (see [Set.Add] for both).
//
// The input is one or more JSON values, one after another (as a YAML stream
// of documents becomes when each is converted): each value is an IPPool, an
// IPPoolList or List whose items are IPPools, or a JSON array of those; a
// null value, which an empty or comment-only YAML document converts to, is
// skipped, as calicoctl and kubectl skip such documents. An
// IPPool has apiVersion projectcalico.org/v3 or crd.projectcalico.org/v1,
// kind IPPool, metadata.name and spec; the spec is read by
// [Pool.UnmarshalJSON], which refuses fields it does not know. The spec of
// a crd.projectcalico.org/v1 IPPool may also hold the APIv1 fields of pools
// created under Calico 2.x on the Kubernetes datastore, which DecodeManifest
// reads as Calico's datastore driver does: "ipip" ({"enabled": true, "mode":
// "cross-subnet"}) sets ipipMode (Never when not enabled, CrossSubnet for
// mode cross-subnet, else Always), and "nat-outgoing" true sets natOutgoing. Other
// metadata (annotations, uid, resourceVersion, ...) and top-level fields
// such as status are ignored. Items of an IPPoolList may leave out
// apiVersion and kind. Calico APIv1 "ipPool" manifests (Calico 2.x) are
// refused with a hint.
//
// The package has no YAML dependency: convert YAML manifests to JSON before
// calling DecodeManifest (any YAML library can, e.g. sigs.k8s.io/yaml's
// YAMLToJSON, once per document).
func DecodeManifest(data []byte) ([]Pool, error) {
	d := manifestDecoder{pools: []Pool{}}
	dec := json.NewDecoder(bytes.NewReader(data))
	values := 0
	for {
		var v json.RawMessage
		err := dec.Decode(&v)
		if err == io.EOF {
			break
		}
		if err != nil {
			hint := ""
			if values == 0 && looksLikeYAML(data) {
				hint = " (the input looks like YAML: convert it to JSON first, see DecodeManifest)"
			}
			return nil, &DecodeError{Item: len(d.pools) + 1, Err: fmt.Errorf("invalid JSON%s: %w", hint, err)}
		}
		if strictjson.IsNull(v) {
			continue // an empty YAML document, as YAMLToJSON converts one
		}
		values++
		if err := d.value(v); err != nil {
			return nil, err
		}
	}
	if values == 0 {
		return nil, &DecodeError{Item: 1, Err: errors.New("no manifest in the input")}
	}
	return d.pools, nil
}

type manifestDecoder struct {
	pools []Pool
}

// value reads one top-level value: a document or an array of them.
func (d *manifestDecoder) value(v json.RawMessage) error {
	v = bytes.TrimSpace(v)
	if len(v) > 0 && v[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(v, &items); err != nil {
			return d.errorf("", "invalid JSON: %w", err)
		}
		for _, it := range items {
			if err := d.document(it, false, ""); err != nil {
				return err
			}
		}
		return nil
	}
	return d.document(v, false, "")
}

// document reads an IPPool or, unless inList, a list of them. listVersion
// is the apiVersion of the enclosing IPPoolList, if any.
func (d *manifestDecoder) document(v json.RawMessage, inList bool, listVersion string) error {
	fields, err := strictjson.Fields(v)
	if err != nil {
		return d.errorf("", "%w", err)
	}
	var apiVersion, kind string
	var metadata, spec, items json.RawMessage
	for _, f := range fields {
		switch f.Key {
		case "apiVersion":
			if err := strictjson.DecodeAs(f.Value, &apiVersion, "a string"); err != nil {
				return d.errorf("", "apiVersion: %w", err)
			}
		case "kind":
			if err := strictjson.DecodeAs(f.Value, &kind, "a string"); err != nil {
				return d.errorf("", "kind: %w", err)
			}
		case "metadata":
			metadata = f.Value
		case "spec":
			spec = f.Value
		case "items":
			items = f.Value
		}
	}
	if inList && listVersion != "" {
		// Items of an IPPoolList may rely on the list for these.
		if kind == "" {
			kind = "IPPool"
		}
		if apiVersion == "" {
			apiVersion = listVersion
		}
	}
	switch kind {
	case "IPPool":
	case "IPPoolList", "List":
		if inList {
			return d.errorf("", "kind %s inside a list: want IPPool", kind)
		}
		if kind == "IPPoolList" && !knownVersion(apiVersion) {
			return d.errorf("", "apiVersion %q: want %s or %s", apiVersion, APIVersionV3, APIVersionCRD)
		}
		var list []json.RawMessage
		if len(items) > 0 && !strictjson.IsNull(items) {
			if err := json.Unmarshal(items, &list); err != nil {
				return d.errorf("", "items: want a list, got %s", strictjson.Abbrev(items))
			}
		}
		inherit := ""
		if kind == "IPPoolList" {
			inherit = apiVersion
		}
		for _, it := range list {
			if err := d.document(it, true, inherit); err != nil {
				return err
			}
		}
		return nil
	case "ipPool":
		return d.errorf("", "kind ipPool is Calico APIv1 (Calico 2.x), which carve does not read: convert it to %s first (calico-upgrade)", APIVersionV3)
	case "":
		return d.errorf("", "kind is missing: want IPPool, IPPoolList or List")
	default:
		return d.errorf("", "kind %q: want IPPool, IPPoolList or List", kind)
	}
	if !knownVersion(apiVersion) {
		return d.errorf("", "apiVersion %q: want %s or %s", apiVersion, APIVersionV3, APIVersionCRD)
	}
	name, err := metadataName(metadata)
	if err != nil {
		return d.errorf("", "%w", err)
	}
	var p Pool
	if len(spec) > 0 {
		if err := p.unmarshalSpec(spec, apiVersion == APIVersionCRD); err != nil {
			return d.errorf(name, "%w", err)
		}
	}
	p.Name = name
	d.pools = append(d.pools, p)
	return nil
}

func knownVersion(v string) bool { return v == APIVersionV3 || v == APIVersionCRD }

// metadataName returns metadata.name, ignoring every other metadata field.
func metadataName(metadata json.RawMessage) (string, error) {
	if len(metadata) == 0 || strictjson.IsNull(metadata) {
		return "", errors.New("metadata.name is missing")
	}
	fields, err := strictjson.Fields(metadata)
	if err != nil {
		return "", fmt.Errorf("metadata: %w", err)
	}
	for _, f := range fields {
		if f.Key != "name" {
			continue
		}
		var name string
		if err := strictjson.DecodeAs(f.Value, &name, "a string"); err != nil {
			return "", fmt.Errorf("metadata.name: %w", err)
		}
		if name == "" {
			break
		}
		return name, nil
	}
	return "", errors.New("metadata.name is missing")
}

func (d *manifestDecoder) errorf(name, format string, args ...any) error {
	return &DecodeError{Item: len(d.pools) + 1, Name: name, Err: fmt.Errorf(format, args...)}
}

// looksLikeYAML reports whether data starts the way a YAML manifest does.
func looksLikeYAML(data []byte) bool {
	t := bytes.TrimSpace(data)
	return bytes.HasPrefix(t, []byte("apiVersion:")) || bytes.HasPrefix(t, []byte("kind:")) || bytes.HasPrefix(t, []byte("---"))
}
