package main

import (
	"fmt"
	"io"
	"strings"
)

// tally is one tier's count of test results (tests and subtests each count).
type tally struct {
	pass, fail, skip int
	flaky            int      // passed only on a retry (counted in pass too)
	failed           []string // "pkg TestX", or "pkg: why" for a package that failed without a failing test
	skipped          []skipped
	passed           []string // "importpath TestX"
}

type skipped struct{ pkg, name, reason string }

func (t *tally) add(u tally) {
	t.pass += u.pass
	t.fail += u.fail
	t.skip += u.skip
	t.flaky += u.flaky
	t.failed = append(t.failed, u.failed...)
	t.skipped = append(t.skipped, u.skipped...)
	t.passed = append(t.passed, u.passed...)
}

// countSkippedIn counts the skipped tests whose "importpath TestX" is in set.
func (t *tally) countSkippedIn(set map[string]bool) int {
	n := 0
	for _, s := range t.skipped {
		if set[s.pkg+" "+s.name] {
			n++
		}
	}
	return n
}

// count records one result; status is PASS, FAIL or SKIP (go test -v's
// words) or pass, fail, skip (go test -json's).
func (t *tally) count(pkg, name, status, reason string) {
	switch strings.ToUpper(status) {
	case "PASS":
		t.pass++
		t.passed = append(t.passed, pkg+" "+name)
	case "FAIL":
		t.fail++
		t.failed = append(t.failed, pkgName(pkg)+" "+name)
	case "SKIP":
		t.skip++
		t.skipped = append(t.skipped, skipped{pkg, name, reason})
	}
}

// failPackage records a package that failed without a failing test (build
// failure, crash, timeout, a test host that died).
func (t *tally) failPackage(pkg, why string) {
	t.fail++
	t.failed = append(t.failed, pkgName(pkg)+": "+why)
}

// line is the plain "N passed, N failed, N skipped" that CI's runner reads.
func (t *tally) line() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped", t.pass, t.fail, t.skip)
}

// pkgName drops the module path from an import path.
func pkgName(pkg string) string {
	if s, ok := strings.CutPrefix(pkg, modulePath+"/"); ok {
		return s
	}
	return pkg
}

const modulePath = "github.com/ptvmm/ptvmm"

// printList prints up to max items of list under a heading.
func printList(w io.Writer, heading string, list []string, max int) {
	if len(list) == 0 {
		return
	}
	fmt.Fprintf(w, "      %s:\n", heading)
	for i, s := range list {
		if i == max {
			fmt.Fprintf(w, "        ... and %d more\n", len(list)-max)
			break
		}
		fmt.Fprintf(w, "        %s\n", s)
	}
}
