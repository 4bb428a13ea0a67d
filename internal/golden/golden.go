// Package golden compares a test's output with a golden file, for the
// examples' tests. Run a test with -update to rewrite its golden file.
package golden

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// Output calls run, as an example's main does, with the test's context and
// a buffer, and checks what it wrote against the golden file at path. An
// error of run fails t.
func Output(t *testing.T, path string, run func(context.Context, io.Writer) error) {
	t.Helper()
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatal(err)
	}
	Check(t, out.Bytes(), path)
}

// Check fails t unless got equals the contents of the golden file at path
// (relative to the test's package), printing got so a reader sees what
// changed. With -update it writes got to the file instead.
func Check(t testing.TB, got []byte, path string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (go test -update to accept it):\n%s", path, got)
	}
}
