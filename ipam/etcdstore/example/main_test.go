package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/carve-ipam/carve/internal/golden"
	"github.com/carve-ipam/carve/ipam/etcdstore/internal/embedetcd"
)

const goldenFile = "testdata/output.golden"

// TestOutput runs the example with its embedded etcd and compares what it
// prints with the golden file (go test ./example -update rewrites it).
func TestOutput(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), &out, config{dataDir: t.TempDir(), prefix: "/carve-example/"}); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, out.Bytes(), goldenFile)
}

// TestOutputWithEndpoint runs the example twice against an etcd given by
// endpoint, as with -endpoints: both runs print the golden output (after
// the line naming etcd), since each cleans up after itself.
func TestOutputWithEndpoint(t *testing.T) {
	srv, err := embedetcd.Start(t.TempDir(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	want, err := os.ReadFile(goldenFile)
	if err != nil {
		t.Fatal(err)
	}
	_, wantBody, _ := strings.Cut(string(want), "\n")
	for i := range 2 {
		var out bytes.Buffer
		if err := run(t.Context(), &out, config{endpoints: []string{srv.Endpoint()}, prefix: "/carve-example/"}); err != nil {
			t.Fatal(err)
		}
		head, body, _ := strings.Cut(out.String(), "\n")
		if head != "etcd: "+srv.Endpoint() {
			t.Errorf("run %d: first line %q, want it to name the endpoint", i+1, head)
		}
		if body != wantBody {
			t.Errorf("run %d against an endpoint printed:\n%s", i+1, out.String())
		}
	}
}
