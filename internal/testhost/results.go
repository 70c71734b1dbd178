package testhost

import (
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Agent console lines (the guest agent's contract).
const (
	ReadyLine  = "ptvmm-agent: ready"
	exitPrefix = "ptvmm-agent: exit status "
)

// Runner console lines (RunPlan's contract with the host side): one before
// and one after each test binary, so results are attributed to their package
// and a binary that died without a failing test is still seen.
const (
	runStartPrefix = "ptvmm-testhost: run "
	runDonePrefix  = "ptvmm-testhost: done "
)

// TestResult is one test's outcome as `go test -v` printed it.
type TestResult struct {
	Pkg     string // import path of the binary that printed it ("" outside a RunPlan)
	Name    string // TestX or TestX/sub
	Status  string // PASS, FAIL or SKIP
	Elapsed time.Duration
	// Reason is, for a SKIP, the test's last log line before its result
	// (t.Skip's message), when one was seen.
	Reason string
}

// PackageRun is one test binary's run as the runner's lines reported it.
type PackageRun struct {
	Pkg        string
	ExitStatus int // -1 until the runner's done line
}

// Anchored, with go test's four-space indent per subtest level: a result
// line quoted inside another test's failure message (tab-indented) is not
// a result.
var resultRE = regexp.MustCompile(`^(?: {4})*--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+)s\)`)

// ParseResult recognises a `go test -v` result line.
func ParseResult(line string) (TestResult, bool) {
	m := resultRE.FindStringSubmatch(line)
	if m == nil {
		return TestResult{}, false
	}
	sec, err := strconv.ParseFloat(m[3], 64)
	if err != nil {
		return TestResult{}, false
	}
	return TestResult{Name: m[2], Status: m[1], Elapsed: time.Duration(sec * float64(time.Second))}, true
}

// go test -v names the test whose output follows, and streams t.Log lines
// as "<indent>file.go:N: message".
var (
	testNameRE = regexp.MustCompile(`^=== (?:RUN|CONT|NAME) +(\S+)`)
	testLogRE  = regexp.MustCompile(`^ +\S+\.go:\d+: (.+)$`)
)

// LogMessage recognises a t.Log/t.Skip line of `go test -v` output
// ("<indent>file.go:N: message") and returns the message.
func LogMessage(line string) (string, bool) {
	m := testLogRE.FindStringSubmatch(strings.TrimRight(line, "\r\n"))
	if m == nil {
		return "", false
	}
	return m[1], true
}

// ParseExitStatus recognises the agent's "ptvmm-agent: exit status N" line.
func ParseExitStatus(line string) (int, bool) {
	return parseStatus(line, exitPrefix)
}

func parseStatus(line, prefix string) (int, bool) {
	i := strings.Index(line, prefix)
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(line[i+len(prefix):])
	if len(f) == 0 {
		return 0, false
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 0, false
	}
	return n, true
}

// runStartLine and runDoneLine are the runner's markers around pkg's binary.
func runStartLine(pkg string) string { return runStartPrefix + pkg }
func runDoneLine(pkg string, status int) string {
	return runDonePrefix + pkg + " exit status " + strconv.Itoa(status)
}

// parseRunStart recognises a runner start line; pkg is its package.
func parseRunStart(line string) (pkg string, ok bool) {
	i := strings.Index(line, runStartPrefix)
	if i < 0 {
		return "", false
	}
	f := strings.Fields(line[i+len(runStartPrefix):])
	if len(f) != 1 {
		return "", false
	}
	return f[0], true
}

// parseRunDone recognises a runner done line.
func parseRunDone(line string) (pkg string, status int, ok bool) {
	i := strings.Index(line, runDonePrefix)
	if i < 0 {
		return "", 0, false
	}
	rest := line[i+len(runDonePrefix):]
	pkg, after, found := strings.Cut(rest, " ")
	if !found || pkg == "" {
		return "", 0, false
	}
	status, ok = parseStatus(after, "exit status ")
	return pkg, status, ok
}
