package main

import (
	"testing"

	"github.com/carve-ipam/carve/internal/golden"
)

// TestOutput runs the example and compares what it prints with the golden
// file.
func TestOutput(t *testing.T) {
	golden.Output(t, "testdata/output.golden", run)
}
