package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/ptvmm/ptvmm/internal/testhost"
)

// pkgResult is one package's results over the test host boots that ran it.
type pkgResult struct {
	pkg    string
	tests  map[string]testhost.TestResult // by name; a later boot's result replaces an earlier one
	order  []string                       // names in first-seen order
	status int                            // the binary's exit status in its last boot; -1: it never finished
	ran    bool                           // it started in some boot
	// failedBefore are top-level tests that did not pass in an earlier boot.
	failedBefore []string
	flaky        []string // passed on a retry after failing
}

func newPkgResult(pkg string) *pkgResult {
	return &pkgResult{pkg: pkg, tests: map[string]testhost.TestResult{}, status: -1}
}

// merge takes one boot's results for the package. A top-level test that ran
// again replaces its earlier result and its subtests'.
func (p *pkgResult) merge(tests []testhost.TestResult) {
	rerun := map[string]bool{}
	for _, tr := range tests {
		if !strings.Contains(tr.Name, "/") {
			rerun[tr.Name] = true
		}
	}
	for name := range p.tests {
		if top, _, _ := strings.Cut(name, "/"); rerun[top] {
			delete(p.tests, name)
		}
	}
	for _, tr := range tests {
		if _, ok := p.tests[tr.Name]; !ok && !contains(p.order, tr.Name) {
			p.order = append(p.order, tr.Name)
		}
		p.tests[tr.Name] = tr
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ok says the package's last boot ran it to a zero exit with no failed test.
func (p *pkgResult) ok() bool {
	if p.status != 0 {
		return false
	}
	for _, tr := range p.tests {
		if tr.Status == "FAIL" {
			return false
		}
	}
	return true
}

// split lists the top-level tests that failed and those that passed or
// skipped (to skip on a retry). Tests never reached are in neither list.
func (p *pkgResult) split() (failed, done []string) {
	for _, name := range p.order {
		tr, ok := p.tests[name]
		if !ok || strings.Contains(name, "/") {
			continue
		}
		if tr.Status == "FAIL" {
			failed = append(failed, name)
		} else {
			done = append(done, regexp.QuoteMeta(name))
		}
	}
	return failed, done
}

// tally counts the package's final results.
func (p *pkgResult) tally() tally {
	var t tally
	for _, name := range p.order {
		if tr, ok := p.tests[name]; ok {
			t.count(p.pkg, name, tr.Status, tr.Reason)
		}
	}
	t.flaky = len(p.flaky)
	if t.fail == 0 && !p.ok() {
		switch {
		case !p.ran:
			t.failPackage(p.pkg, "never ran (the test host stopped before it)")
		case p.status < 0:
			t.failPackage(p.pkg, "the test host stopped while it ran")
		default:
			t.failPackage(p.pkg, fmt.Sprintf("exit status %d without a failing test", p.status))
		}
	}
	return t
}

// runInTestHost runs the test binaries in test host boots: all of them in
// the first, then, up to o.retries times, a fresh test host for the packages
// that did not pass, skipping their tests that already passed or skipped. A
// test that passes only on a retry is reported FLAKY, never silently. The
// packages in short run with -test.short.
func runInTestHost(ctx context.Context, a *testhost.Assets, tests []testhost.TestBinary, short map[string]bool, o options) map[string]*pkgResult {
	results := map[string]*pkgResult{}
	for _, b := range tests {
		results[b.Pkg] = newPkgResult(b.Pkg)
	}
	pending := tests
	for try := 0; len(pending) > 0; try++ {
		if try > 0 {
			if try > o.retries || time.Until(o.deadline) < 2*time.Minute {
				break
			}
			var names []string
			for _, b := range pending {
				failed, _ := results[b.Pkg].split()
				if len(failed) == 0 {
					failed = []string{"(none reported: it did not finish)"}
				}
				names = append(names, pkgName(b.Pkg)+": "+strings.Join(failed, ", "))
			}
			fmt.Printf("testhost: retrying in a fresh test host (%s); tests that passed or skipped are skipped\n", strings.Join(names, "; "))
		}
		extra := map[string][]string{}
		for _, b := range pending {
			if short[b.Pkg] {
				extra[b.Pkg] = append(extra[b.Pkg], "-test.short")
			}
			if _, done := results[b.Pkg].split(); len(done) > 0 {
				extra[b.Pkg] = append(extra[b.Pkg], "-test.skip=^("+strings.Join(done, "|")+")$")
			}
		}
		res, _ := bootTests(ctx, a, pending, extra, o)
		var next []testhost.TestBinary
		for _, b := range pending {
			p := results[b.Pkg]
			p.status = -1
			if res != nil {
				var mine []testhost.TestResult
				for _, tr := range res.Tests {
					if tr.Pkg == b.Pkg {
						mine = append(mine, tr)
					}
				}
				p.merge(mine)
				for _, pr := range res.Packages {
					if pr.Pkg == b.Pkg {
						p.ran = true
						p.status = pr.ExitStatus
					}
				}
			}
			if p.ok() {
				if try > 0 && len(p.failedBefore) > 0 {
					p.flaky = p.failedBefore
					fmt.Printf("testhost: FLAKY: %s: %s failed on an earlier run and passed on the retry\n", pkgName(b.Pkg), strings.Join(p.flaky, ", "))
				}
				continue
			}
			failed, _ := p.split()
			if len(failed) == 0 {
				failed = []string{"(did not finish)"}
			}
			p.failedBefore = append(p.failedBefore, failed...)
			next = append(next, b)
		}
		pending = next
	}
	return results
}

// bootTests boots one test host running the binaries through the runner.
func bootTests(ctx context.Context, a *testhost.Assets, tests []testhost.TestBinary, extra map[string][]string, o options) (*testhost.Result, bool) {
	steps := testhost.PlanSteps(tests, testArgs(o, time.Until(o.deadline)), extra)
	res, ok := boot(ctx, a, testhost.HostSpec{Env: o.env, Tests: tests, Plan: steps}, o)
	printSummary(res)
	return res, ok
}

// testArgs are a test binary's arguments in the test host with left time
// before qemu is killed.
func testArgs(o options, left time.Duration) []string {
	// Leave the binary a minute less than qemu so it reports its own timeout.
	inner := left - time.Minute
	if inner < time.Minute {
		inner = left / 2
	}
	// A test host that hangs while still printing (RCU stall reports) is ended by
	// the binary's own timeout, early enough to leave time for a retry.
	if o.testTimeout > 0 && inner > o.testTimeout {
		inner = o.testTimeout
	}
	args := []string{"-test.v", "-test.timeout=" + inner.Round(time.Second).String()}
	if o.run != "" {
		args = append(args, "-test.run="+o.run)
	}
	return args
}
