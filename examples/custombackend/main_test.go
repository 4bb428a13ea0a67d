package main

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/carve-ipam/carve/internal/golden"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
)

// TestConformance proves Store with the suite every backend runs, in memory
// and kept in a file.
func TestConformance(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		storetest.RunConformanceTests(t, func(t *testing.T) ipam.Store { return New() })
	})
	t.Run("file", func(t *testing.T) {
		storetest.RunConformanceTests(t, func(t *testing.T) ipam.Store {
			s, err := Open(filepath.Join(t.TempDir(), "carve.json"))
			if err != nil {
				t.Fatal(err)
			}
			return s
		})
	})
}

// TestSaveFailureChangesNothing checks that a write the file cannot take is
// undone: here the file's directory does not exist.
func TestSaveFailureChangesNothing(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "missing", "carve.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(t.Context(), ipam.KindBlock, "b", []byte("v")); err == nil {
		t.Fatal("Create saved to a directory that does not exist")
	}
	if _, err := s.Get(t.Context(), ipam.KindBlock, "b"); !errors.Is(err, ipam.ErrNotFound) {
		t.Errorf("Get after a failed Create: %v, want ipam.ErrNotFound", err)
	}
}

// TestOutput runs the example and compares what it prints with the golden
// file.
func TestOutput(t *testing.T) {
	golden.Output(t, "testdata/output.golden", run)
}
