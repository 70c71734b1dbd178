package testhost

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeTest writes a shell script standing in for a test binary.
func fakeTest(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "x.test")
	require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755))
	return p
}

// parse feeds console text to a Result as Boot does.
func parse(text string) *Result {
	r := &Result{ExitStatus: -1}
	for line := range strings.Lines(text) {
		r.line(strings.TrimRight(line, "\r\n"), time.Second)
	}
	return r
}

// Every binary runs even after one fails, and each one's results and exit
// status are attributed to its package; a crash without a failing test
// still shows as a non-zero status.
func TestRunPlanAttributesResults(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh for the fake test binaries")
	}
	a := fakeTest(t, `echo '=== RUN   TestA'; echo '--- PASS: TestA (0.10s)'; echo '=== RUN   TestS'; echo '    s_test.go:9: needs a usable /dev/kvm'; echo '--- SKIP: TestS (0.00s)'; exit 0`)
	b := fakeTest(t, `echo '=== RUN   TestB'; echo 'panic: test timed out'; exit 2`)
	c := fakeTest(t, `pwd; echo "args $*"; echo '--- FAIL: TestC (1.00s)'; exit 1`)
	dir := t.TempDir()
	var out strings.Builder
	code := RunPlan(context.Background(), []RunStep{
		{Pkg: "p/a", Path: a},
		{Pkg: "p/b", Path: b},
		{Pkg: "p/c", Path: c, Args: []string{"-test.v", "-test.run=^TestC$"}, Dir: dir},
		{Pkg: "p/missing", Path: filepath.Join(dir, "nope.test")},
	}, &out)
	assert.Equal(t, 1, code)
	text := out.String()
	assert.Contains(t, text, dir+"\n", "runs in the step's directory")
	assert.Contains(t, text, "args -test.v -test.run=^TestC$")

	r := parse(text)
	assert.Equal(t, []PackageRun{{"p/a", 0}, {"p/b", 2}, {"p/c", 1}, {"p/missing", 127}}, r.Packages)
	require.Len(t, r.Tests, 3)
	assert.Equal(t, TestResult{Pkg: "p/a", Name: "TestA", Status: "PASS", Elapsed: 100 * time.Millisecond}, r.Tests[0])
	assert.Equal(t, TestResult{Pkg: "p/a", Name: "TestS", Status: "SKIP", Reason: "needs a usable /dev/kvm"}, r.Tests[1])
	assert.Equal(t, "p/c", r.Tests[2].Pkg)
	assert.Equal(t, "FAIL", r.Tests[2].Status)
}

// A test host that dies while a binary runs leaves that package without
// an exit status, and later packages never appear.
func TestResultPackageCutShort(t *testing.T) {
	r := parse(runStartLine("p/a") + "\n--- PASS: TestA (0.01s)\n" + runDoneLine("p/a", 0) + "\n" +
		runStartLine("p/b") + "\n=== RUN   TestB\n")
	assert.Equal(t, []PackageRun{{"p/a", 0}, {"p/b", -1}}, r.Packages)
	require.Len(t, r.Tests, 1)
	assert.Equal(t, "p/a", r.Tests[0].Pkg)
}

func TestRunMarkersParse(t *testing.T) {
	pkg, ok := parseRunStart("[ 3.1] " + runStartLine("github.com/x/y") + "\r")
	assert.True(t, ok)
	assert.Equal(t, "github.com/x/y", pkg)
	pkg, n, ok := parseRunDone(runDoneLine("github.com/x/y", 137))
	assert.True(t, ok)
	assert.Equal(t, "github.com/x/y", pkg)
	assert.Equal(t, 137, n)
	for _, bad := range []string{runDonePrefix + "p", runDonePrefix + "p exit status x", runDonePrefix + " exit status 1", "ptvmm-agent: exit status 1"} {
		_, _, ok := parseRunDone(bad)
		assert.False(t, ok, bad)
	}
	_, ok = parseRunStart(runStartPrefix + "a b")
	assert.False(t, ok)
}

func TestPlanSteps(t *testing.T) {
	tests := []TestBinary{
		{Pkg: "m/a", Name: "a.test"},
		{Pkg: "m/b", Name: "b.test", Testdata: "/src/b/testdata"},
	}
	steps := PlanSteps(tests, []string{"-test.v"}, map[string][]string{"m/b": {"-test.skip=^(TestX)$"}})
	require.Len(t, steps, 2)
	assert.Equal(t, RunStep{Pkg: "m/a", Path: TestHostAssets + "/tests/a.test", Args: []string{"-test.v"}, Dir: "/"}, steps[0])
	assert.Equal(t, []string{"-test.v", "-test.skip=^(TestX)$"}, steps[1].Args)
	assert.Equal(t, TestHostAssets+"/src/b", steps[1].Dir)
}

func TestNeedsKVM(t *testing.T) {
	dir := t.TempDir()
	for name, src := range map[string]string{
		"micro_test.go": "g := kvmtest.New(t, cfg)",
		"own_test.go":   "if err := Available(); err != nil {",
		"tap_test.go":   "if ok, why := tap.CanCreate(); !ok {",
		"dev_test.go":   `f, err := os.Open("/dev/kvm")`,
		"plain_test.go": "v.Available = true; x.IsAvailable()",
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644))
	}
	for _, f := range []string{"micro_test.go", "own_test.go", "tap_test.go", "dev_test.go"} {
		need, err := NeedsKVM(Package{Dir: dir, TestFiles: []string{"plain_test.go", f}})
		require.NoError(t, err)
		assert.True(t, need, f)
	}
	need, err := NeedsKVM(Package{Dir: dir, TestFiles: []string{"plain_test.go"}})
	require.NoError(t, err)
	assert.False(t, need)
	_, err = NeedsKVM(Package{Dir: dir, TestFiles: []string{"gone_test.go"}})
	assert.Error(t, err)
}
