package main

import (
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/internal/testhost"
)

func TestSplitResults(t *testing.T) {
	res := &testhost.Result{Tests: []testhost.TestResult{
		{Name: "TestA", Status: "PASS"},
		{Name: "TestB/sub", Status: "FAIL"},
		{Name: "TestB", Status: "FAIL"},
		{Name: "TestC", Status: "SKIP"},
	}}
	failed, done := splitResults(res)
	require.Equal(t, []string{"TestB"}, failed)
	require.Equal(t, []string{"TestA", "TestC"}, done)

	// A test host that died before any failure was reported still retries the rest.
	failed, done = splitResults(&testhost.Result{Tests: []testhost.TestResult{{Name: "TestA", Status: "PASS"}}})
	require.Len(t, failed, 1)
	require.Regexp(t, "none reported", failed[0])
	require.Equal(t, []string{"TestA"}, done)
}

func TestSkipPatternIsAnchored(t *testing.T) {
	_, done := splitResults(&testhost.Result{Tests: []testhost.TestResult{{Name: "TestLinuxBoot", Status: "PASS"}}})
	re := regexp.MustCompile("^(" + done[0] + ")$")
	require.True(t, re.MatchString("TestLinuxBoot"))
	require.False(t, re.MatchString("TestLinuxBootLibrary"), "a passed test must not skip a longer-named one")
}

func TestTestCommandTimeout(t *testing.T) {
	b := testhost.TestBinary{Name: "e2e.test"}
	o := options{testTimeout: 8 * time.Minute}
	require.Contains(t, testCommand(b, o, "", 20*time.Minute), "-test.timeout=8m0s", "capped, leaving time to retry")
	require.Contains(t, testCommand(b, o, "", 5*time.Minute), "-test.timeout=4m0s", "a minute less than qemu has")
	o.testTimeout = 0
	require.Contains(t, testCommand(b, o, "", 20*time.Minute), "-test.timeout=19m0s")
	o.run = "TestA"
	require.Contains(t, testCommand(b, o, "^(TestB)$", 20*time.Minute), `'-test.run=TestA' '-test.skip=^(TestB)$'`)
}
