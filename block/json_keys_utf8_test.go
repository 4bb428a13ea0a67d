package block_test

import (
	"errors"
	"testing"

	"github.com/carve-ipam/carve/block"
)

// TestJSONAttributeKeysTwiceAfterDecoding: encoding/json turns every
// byte of a string that is not UTF-8 into U+FFFD, so attribute keys that
// differ only in such bytes (or one of them written as the escape \ufffd)
// decode to one key, and the last value silently wins. The package doc
// says an attribute key given twice is refused: these are the same key
// once decoded, and one of the values is lost without an error.
func TestJSONAttributeKeysTwiceAfterDecoding(t *testing.T) {
	const head = `{"version":1,"cidr":"10.0.0.0/30","owners":[{"handle":"h","attrs":{`
	const tail = `}}],"allocations":[{"addr":"10.0.0.1","owner":0,"seq":1}]}`
	for name, attrs := range map[string]string{
		"two bytes that are not UTF-8": "\"k\xff\":\"a\",\"k\xfe\":\"b\"",
		"a byte and the escape":        "\"k\xff\":\"a\",\"k\\ufffd\":\"b\"",
		"a byte and U+FFFD":            "\"k\xff\":\"a\",\"k\uFFFD\":\"b\"",
	} {
		js := head + attrs + tail
		var b block.Block
		err := b.UnmarshalJSON([]byte(js))
		if err == nil {
			var attrs map[string]string
			for o := range b.Owners() {
				attrs = o.Attrs
			}
			t.Errorf("%s: accepted %q as a block whose owner has attributes %q: one key's value is lost", name, js, attrs)
		} else if !errors.Is(err, block.ErrCorrupt) {
			t.Errorf("%s: %v does not wrap ErrCorrupt", name, err)
		}
	}
}
