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

// TestResult is one test's outcome as `go test -v` printed it.
type TestResult struct {
	Name    string // TestX or TestX/sub
	Status  string // PASS, FAIL or SKIP
	Elapsed time.Duration
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

// ParseExitStatus recognises the agent's "ptvmm-agent: exit status N" line.
func ParseExitStatus(line string) (int, bool) {
	i := strings.Index(line, exitPrefix)
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(line[i+len(exitPrefix):])
	if len(f) == 0 {
		return 0, false
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 0, false
	}
	return n, true
}
