package golden

import (
	"os"
	"path/filepath"
	"testing"
)

// fakeT records failures instead of stopping the test.
type fakeT struct {
	testing.TB
	failed bool
}

func (f *fakeT) Helper()               {}
func (f *fakeT) Errorf(string, ...any) { f.failed = true }
func (f *fakeT) Fatal(...any)          { f.failed = true }

func TestCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.golden")
	if err := os.WriteFile(path, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := &fakeT{TB: t}
	Check(ok, []byte("hello\n"), path)
	if ok.failed {
		t.Error("equal output failed the check")
	}
	bad := &fakeT{TB: t}
	Check(bad, []byte("hello, world\n"), path)
	if !bad.failed {
		t.Error("different output passed the check")
	}
	missing := &fakeT{TB: t}
	Check(missing, []byte("x"), filepath.Join(t.TempDir(), "none"))
	if !missing.failed {
		t.Error("a missing golden file passed the check")
	}
}
