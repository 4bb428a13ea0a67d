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
			if f.Key == key {
				return nil, fmt.Errorf("%s: appears twice", strconv.Quote(key))
			}
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
