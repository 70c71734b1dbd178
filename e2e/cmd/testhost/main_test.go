package main

import (
	"regexp"
	"testing"

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
