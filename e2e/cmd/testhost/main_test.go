package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/internal/testhost"
)

func res(name, status string) testhost.TestResult {
	return testhost.TestResult{Name: name, Status: status}
}

func TestPkgResultSplit(t *testing.T) {
	p := newPkgResult("m/p")
	p.merge([]testhost.TestResult{res("TestA", "PASS"), res("TestB/sub", "FAIL"), res("TestB", "FAIL"), res("TestC", "SKIP")})
	failed, done := p.split()
	require.Equal(t, []string{"TestB"}, failed)
	require.Equal(t, []string{"TestA", "TestC"}, done)
}

func TestSkipPatternIsAnchored(t *testing.T) {
	p := newPkgResult("m/p")
	p.merge([]testhost.TestResult{res("TestLinuxBoot", "PASS")})
	_, done := p.split()
	re := regexp.MustCompile("^(" + done[0] + ")$")
	require.True(t, re.MatchString("TestLinuxBoot"))
	require.False(t, re.MatchString("TestLinuxBootLibrary"), "a passed test must not skip a longer-named one")
}

// A retry's result replaces the first run's, subtests included; the final
// count has the test once, as passed.
func TestPkgResultRetryReplaces(t *testing.T) {
	p := newPkgResult("m/p")
	p.status = 1
	p.ran = true
	p.merge([]testhost.TestResult{res("TestA", "PASS"), res("TestB/x", "FAIL"), res("TestB", "FAIL")})
	assert.False(t, p.ok())
	tl := p.tally()
	assert.Equal(t, "1 passed, 2 failed, 0 skipped", tl.line())

	p.status = 0
	p.merge([]testhost.TestResult{res("TestB/y", "PASS"), res("TestB", "PASS")})
	assert.True(t, p.ok())
	tl = p.tally()
	assert.Equal(t, "3 passed, 0 failed, 0 skipped", tl.line(), "TestB/x's failure is gone with its parent's rerun")
}

// A binary that died (test host stopped, crash without a failing test) or
// never ran is a failure, never a silent pass.
func TestPkgResultFailsWithoutFailingTest(t *testing.T) {
	p := newPkgResult("m/p")
	tl := p.tally()
	assert.Equal(t, 1, tl.fail)
	assert.Contains(t, tl.failed[0], "never ran")

	p.ran = true
	p.merge([]testhost.TestResult{res("TestA", "PASS")})
	tl = p.tally()
	assert.Equal(t, "1 passed, 1 failed, 0 skipped", tl.line())
	assert.Contains(t, tl.failed[0], "stopped while it ran")

	p.status = 2
	tl = p.tally()
	assert.Contains(t, tl.failed[0], "exit status 2")

	p.status = 0
	tl = p.tally()
	assert.Equal(t, "1 passed, 0 failed, 0 skipped", tl.line())
}

func TestTestArgsTimeout(t *testing.T) {
	o := options{testTimeout: 8 * time.Minute}
	require.Contains(t, testArgs(o, 20*time.Minute), "-test.timeout=8m0s", "capped, leaving time to retry")
	require.Contains(t, testArgs(o, 5*time.Minute), "-test.timeout=4m0s", "a minute less than qemu has")
	o.testTimeout = 0
	require.Contains(t, testArgs(o, 20*time.Minute), "-test.timeout=19m0s")
	o.run = "TestA"
	require.Equal(t, "-test.run=TestA", testArgs(o, 20*time.Minute)[2])
}

// go test -json: every test and subtest counts, a skip keeps its reason, a
// package that fails without a failing test (build error, panic at init)
// counts once, and the failure's output is printed.
func TestJSONParserCounts(t *testing.T) {
	events := `{"Action":"start","Package":"m/a"}
{"Action":"run","Package":"m/a","Test":"TestA"}
{"Action":"output","Package":"m/a","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"pass","Package":"m/a","Test":"TestA","Elapsed":0.1}
{"Action":"output","Package":"m/a","Test":"TestK","Output":"    k_test.go:12: KVM test needs a usable /dev/kvm: no such file\n"}
{"Action":"skip","Package":"m/a","Test":"TestK","Elapsed":0}
{"Action":"output","Package":"m/a","Test":"TestF/sub","Output":"    f_test.go:3: boom\n"}
{"Action":"fail","Package":"m/a","Test":"TestF/sub","Elapsed":0}
{"Action":"fail","Package":"m/a","Test":"TestF","Elapsed":0}
{"Action":"output","Package":"m/a","Output":"FAIL\n"}
{"Action":"output","Package":"m/a","Output":"FAIL\tm/a\t0.500s\n"}
{"Action":"fail","Package":"m/a","Elapsed":0.5}
{"ImportPath":"m/b [m/b.test]","Action":"build-output","Output":"b.go:1: syntax error\n"}
{"Action":"fail","Package":"m/b","Elapsed":0,"FailedBuild":"m/b [m/b.test]"}
{"Action":"skip","Package":"m/c","Elapsed":0}
{"Action":"pass","Package":"m/d","Test":"TestD","Elapsed":0}
{"Action":"pass","Package":"m/d","Elapsed":0.01}
go: some message
`
	var out strings.Builder
	p := newJSONParser(&out, false)
	for line := range strings.Lines(events) {
		p.line([]byte(strings.TrimSuffix(line, "\n")))
	}
	assert.Equal(t, "2 passed, 3 failed, 1 skipped", p.total.line())
	assert.Equal(t, []skipped{{"m/a", "TestK", "KVM test needs a usable /dev/kvm: no such file"}}, p.total.skipped)
	assert.Equal(t, []string{"m/a TestF/sub", "m/a TestF", "m/b: build failed"}, p.total.failed)
	text := out.String()
	assert.Contains(t, text, "boom")
	assert.Contains(t, text, "syntax error")
	assert.Contains(t, text, "go: some message")
	assert.Contains(t, text, "ok  \tm/d")
	assert.NotContains(t, text, "=== RUN   TestA", "a passing test's output is not printed")
	assert.NotContains(t, text, "FAIL\tm/a\t0.500s", "go test's verdict line is replaced by ours")
	assert.Contains(t, text, "FAIL\tm/a\t500ms\t2 failed, 1 passed, 1 skipped")
	assert.NotContains(t, text, "m/c", "a package without tests is not a result")
}

// The last summary line is the plain total CI's runner reads.
func TestSummaryLastLine(t *testing.T) {
	s := &suite{}
	var u, k tally
	u.count("m/a", "TestK", "SKIP", "no /dev/kvm")
	u.count("m/a", "TestU", "PASS", "")
	k.count("m/a", "TestK", "PASS", "")
	k.count("m/a", "TestU", "PASS", "")
	k.count("m/b", "TestX", "SKIP", "needs two vCPUs")
	var b strings.Builder
	code := s.summary(&b, []*tier{{name: "unit", t: u, ran: true}, {name: "kvm", t: k, ran: true}})
	assert.Equal(t, 0, code)
	out := b.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	assert.Equal(t, "3 passed, 0 failed, 2 skipped", lines[len(lines)-1])
	assert.Contains(t, out, "(1 of them passed in the kvm or e2e tier)")
	assert.Contains(t, out, "b TestX: needs two vCPUs")
}

func TestHarnessNotInKVMTier(t *testing.T) {
	assert.True(t, harness(modulePath+"/e2e"))
	assert.True(t, harness(modulePath+"/e2e/cmd/testhost"))
	assert.True(t, harness(modulePath+"/internal/testhost"))
	assert.False(t, harness(modulePath+"/e2efoo"))
	assert.False(t, harness(modulePath+"/vmm/kvm"))
}
