package block

import (
	"encoding/json"
	"testing"
)

// FuzzKeyChecker: the key checker runs on whatever encoding/json
// accepted as one JSON value, of any shape, and must neither panic nor
// loop on it.
func FuzzKeyChecker(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"cidr":"10.0.0.0/30"}`,
		`{"owners":[{"handle":"h","attrs":{"a":"b","\u0061":"c"}}]}`,
		`[1,2,[3,{"a":{}}],"x\"y"]`,
		` { "a" : [ ] , "b" : { } } `,
		`"\\"`, `1e5`, `-0.5`, `true`, `null`,
		`{"attrs":{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"a":11}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		for _, s := range []*jsonShape{blockShape, ownerShape, allocShape, relShape, {}, nil, {elem: ownerShape}} {
			c := keyChecker{data: data}
			_ = c.value(s)
		}
	})
}
