package main

import (
	"bytes"
	"testing"

	"github.com/carve-ipam/carve/internal/golden"
)

// TestOutput runs the example and compares what it prints with the golden
// file.
func TestOutput(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, out.Bytes(), "testdata/output.golden")
}
