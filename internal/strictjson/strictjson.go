// Package strictjson decodes JSON objects the way Kubernetes' strict
// decoding does, for carve's manifests and records: keys matched exactly
// (encoding/json matches them case-insensitively), duplicate keys refused,
// and errors that quote the offending value.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Field is one member of a JSON object.
type Field struct {
	Key   string
	Value json.RawMessage
}

// Fields splits a JSON object into its members, in order, with keys
// matched exactly and duplicate keys refused.
func Fields(data []byte) ([]Field, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, syntaxErr(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("want an object, got %s", Abbrev(data))
	}
	var fields []Field
	var seen map[string]struct{} // the keys, once there are more than scanMembers
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
		if seen == nil && len(fields) == scanMembers {
			seen = make(map[string]struct{}, 2*scanMembers)
			for _, f := range fields {
				seen[f.Key] = struct{}{}
			}
		}
		if twice(fields, seen, key) {
			return nil, fmt.Errorf("%s: appears twice", strconv.Quote(key))
		}
		if seen != nil {
			seen[key] = struct{}{}
		}
		fields = append(fields, Field{key, v})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, syntaxErr(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("invalid JSON: data after the object")
	}
	return fields, nil
}

// scanMembers is how many members an object's keys are compared with one
// by one; past it they go in a map, so that an object of many members (a
// hostile manifest) costs time linear in its size.
const scanMembers = 16

// twice reports whether key is one of fields' keys, which seen holds if
// it is not nil.
func twice(fields []Field, seen map[string]struct{}, key string) bool {
	if seen != nil {
		_, ok := seen[key]
		return ok
	}
	for _, f := range fields {
		if f.Key == key {
			return true
		}
	}
	return false
}

// DecodeAs decodes v into dst; on failure the error says what was wanted
// (want, such as "a string") and what v is.
func DecodeAs(v json.RawMessage, dst any, want string) error {
	if err := json.Unmarshal(v, dst); err != nil {
		return fmt.Errorf("want %s, got %s", want, Abbrev(v))
	}
	return nil
}

// IsNull reports whether v is the JSON null.
func IsNull(v json.RawMessage) bool { return string(bytes.TrimSpace(v)) == "null" }

// Abbrev shortens a JSON value for an error message.
func Abbrev(v json.RawMessage) string {
	s := string(bytes.TrimSpace(v))
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return s
}

func syntaxErr(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("invalid JSON: %w", err)
}
