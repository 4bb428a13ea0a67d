package main

import (
	"testing"

	"github.com/carve-ipam/carve/internal/golden"
)

// TestOutput runs the quickstart and compares what it prints with the
// golden file, so the README's first command keeps working as documented.
func TestOutput(t *testing.T) {
	golden.Output(t, "testdata/output.golden", run)
}
