package storetest

import (
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
)

// TestRaceGenerationsCatchesEarly: TestSuiteCatchesMutants runs the
// suite twice against each mutant and fails when both runs pass, so
// RaceGenerations must catch a generation that moves before its write is
// visible every time, not in most runs. It missed
// commit-generation-before-write in about 2 of 100 single runs (and
// TestSuiteCatchesMutants failed 2 times in 20 on a quiet 2-core host),
// because its readers may not be reading when the write comes: they are
// started only just before it, and stop after 10000 reads, which a
// writer descheduled on a busy machine lets them make. A check whose
// readers are reading at the write catches such a store in the first
// round that writes that way (the first for a single write, the second
// for a commit); here each try must catch it within the first ten of
// the 150 rounds.
func TestRaceGenerationsCatchesEarly(t *testing.T) {
	if os.Getenv(mutantEnv) != "" {
		t.Skip("in a child")
	}
	if testing.Short() {
		t.Skip("runs the check many times")
	}
	const tries, within = 8, 10
	roundRE := regexp.MustCompile(`round (\d+): a reader read Generation`)
	for _, m := range []mutant{mutGenBeforeWrite, mutCommitGenEarly} {
		for try := range tries {
			cmd := exec.Command(os.Args[0], "-test.run=^TestMutantChild$/^RaceGenerations$", "-test.count=1", "-test.timeout=120s")
			cmd.Env = append(os.Environ(), mutantEnv+"="+string(m))
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if err == nil {
				t.Errorf("%s, try %d: RaceGenerations passed it", m, try)
				continue
			}
			if !errors.As(err, &exit) {
				t.Fatalf("running the check: %v\n%s", err, out)
			}
			sub := roundRE.FindSubmatch(out)
			if sub == nil {
				t.Fatalf("%s, try %d: RaceGenerations failed otherwise:\n%s", m, try, out)
			}
			if n, _ := strconv.Atoi(string(sub[1])); n > within {
				t.Errorf("%s, try %d: RaceGenerations caught it only in round %d", m, try, n)
			}
		}
	}
}
