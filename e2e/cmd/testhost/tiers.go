package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ptvmm/ptvmm/internal/testhost"
	"github.com/ptvmm/ptvmm/vmm/kvm"
)

// The tiers of `make test`, in the order they run.
var allTiers = []string{"unit", "race", "kvm", "e2e"}

// e2ePkg holds the Linux-guest tests: they run in their own tier only.
const e2ePkg = modulePath + "/e2e"

// suite runs test tiers and prints their summary.
type suite struct {
	root    string
	o       options
	keep    bool
	kvmPkgs string   // -kvm-pkgs
	pkgs    []string // -pkgs, without -tiers
	start   time.Time
}

// tier is one tier's plan and result.
type tier struct {
	name   string
	how    string   // for the summary
	pkgs   []string // import paths (host tiers)
	direct bool     // a host tier run with go test on this machine
	t      tally
	ran    bool
	el     time.Duration // wall time; test host tiers share theirs
}

// run runs the tiers (nil: -pkgs as one tier) and prints the summary; it
// returns 1 when anything failed.
func (s *suite) run(ctx context.Context, names []string) int {
	var tiers []*tier
	if names == nil {
		tiers = []*tier{{name: "tests"}}
	}
	for _, n := range names {
		if !slices.Contains(allTiers, n) {
			fatalf("-tiers: unknown tier %q (want %s)", n, strings.Join(allTiers, ", "))
		}
		tiers = append(tiers, &tier{name: n})
	}
	var host []*tier // tiers that run test binaries in the test host, or directly
	for _, t := range tiers {
		switch t.name {
		case "unit":
			fmt.Println("\n== tier unit: go test ./... ==")
			t.how = "go test ./..."
			st := time.Now()
			t.t = goTest{args: s.runArgs("./..."), stream: s.o.verbose}.run(ctx, s.root, os.Stdout)
			t.ran, t.el = true, time.Since(st)
		case "race":
			pkgs, err := s.racePackages(ctx)
			if err != nil {
				t.t.failPackage("race", err.Error())
				t.ran = true
				continue
			}
			t.how = fmt.Sprintf("go test -race -short, %d packages", len(pkgs))
			fmt.Printf("\n== tier race: %s ==\n", t.how)
			st := time.Now()
			t.t = goTest{args: s.runArgs(append([]string{"-race", "-short"}, pkgs...)...), stream: s.o.verbose}.run(ctx, s.root, os.Stdout)
			t.ran, t.el = true, time.Since(st)
		default:
			if err := s.planHostTier(ctx, t); err != nil {
				t.t.failPackage(t.name, err.Error())
				t.ran = true
				continue
			}
			host = append(host, t)
		}
	}
	s.runHostTiers(ctx, host)
	return s.summary(os.Stdout, tiers)
}

// runArgs adds -run to go test arguments.
func (s *suite) runArgs(args ...string) []string {
	if s.o.run != "" {
		return append([]string{"-run", s.o.run}, args...)
	}
	return args
}

// racePackages are the packages with tests other than the Linux-guest ones;
// their KVM tests skip without /dev/kvm (and run there under -race with it).
func (s *suite) racePackages(ctx context.Context) ([]string, error) {
	all, err := testhost.ListTestPackages(ctx, s.root, []string{"./..."})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range all {
		if p.ImportPath != e2ePkg {
			out = append(out, p.ImportPath)
		}
	}
	return out, nil
}

// planHostTier finds a host tier's packages and where it runs.
func (s *suite) planHostTier(ctx context.Context, t *tier) error {
	var patterns []string
	switch t.name {
	case "kvm":
		pkgs, err := s.kvmPackages(ctx)
		if err != nil {
			return err
		}
		t.pkgs = pkgs
	case "e2e":
		patterns = []string{"./e2e"}
	default:
		patterns = s.pkgs
	}
	if patterns != nil {
		list, err := testhost.ListTestPackages(ctx, s.root, patterns)
		if err != nil {
			return err
		}
		for _, p := range list {
			t.pkgs = append(t.pkgs, p.ImportPath)
		}
	}
	switch s.o.mode {
	case "direct":
		t.direct = true
	case "qemu":
	default:
		if t.name == "kvm" {
			// Micro guests need only a usable /dev/kvm (a software KVM will do).
			err := kvm.Available()
			t.direct = err == nil
			if err != nil {
				fmt.Printf("testhost: kvm tier: %v; its packages run in the QEMU TCG test host\n", err)
			}
		} else {
			ok, why := testhost.HardwareKVM()
			t.direct = ok
			if !ok {
				fmt.Printf("testhost: %s tier: %s; using the QEMU TCG test host\n", t.name, why)
			}
		}
	}
	where := "test host"
	if t.direct {
		where = "directly"
	}
	t.how = fmt.Sprintf("%s, %d packages", where, len(t.pkgs))
	if len(t.pkgs) == 1 {
		t.how = where + ", " + pkgName(t.pkgs[0])
	}
	return nil
}

// kvmPackages are -kvm-pkgs, or the packages whose tests need KVM or a TAP
// (see testhost.NeedsKVM), without the Linux-guest tests and the harness.
func (s *suite) kvmPackages(ctx context.Context) ([]string, error) {
	patterns := []string{"./..."}
	if s.kvmPkgs != "auto" {
		patterns = strings.Split(s.kvmPkgs, ",")
	}
	all, err := testhost.ListTestPackages(ctx, s.root, patterns)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range all {
		need := s.kvmPkgs != "auto"
		if !need {
			if need, err = testhost.NeedsKVM(p); err != nil {
				return nil, err
			}
		}
		if need && !harness(p.ImportPath) {
			out = append(out, p.ImportPath)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no packages with KVM tests in %s", strings.Join(patterns, " "))
	}
	return out, nil
}

// harness reports whether pkg is the Linux-guest tests or the test harness:
// their tests name /dev/kvm in test data, not to use it.
func harness(pkg string) bool {
	return pkg == e2ePkg || strings.HasPrefix(pkg, e2ePkg+"/") || pkg == modulePath+"/internal/testhost"
}

// runHostTiers runs the host tiers: those in the test host share its boots,
// the others run go test here.
func (s *suite) runHostTiers(ctx context.Context, tiers []*tier) {
	if len(tiers) == 0 {
		return
	}
	o := s.o
	o.deadline = time.Now().Add(o.timeout)
	var inHost []string
	// Under nested TCG every VM exit costs some 1000 times what it does on
	// hardware: the kvm tier's tests scale their loops down with -short there.
	short := map[string]bool{}
	needAssets := false
	for _, t := range tiers {
		if !t.direct {
			inHost = append(inHost, t.pkgs...)
			for _, p := range t.pkgs {
				short[p] = t.name == "kvm"
			}
		}
		if !t.direct || t.name != "kvm" {
			needAssets = true
		}
	}
	var a *testhost.Assets
	if needAssets {
		fmt.Printf("\n== test host assets ==\n")
		var cleanup func()
		var err error
		if a, cleanup, err = prepare(ctx, s.root, inHost, s.keep); err != nil {
			for _, t := range tiers {
				t.t.failPackage(t.name, err.Error())
				t.ran = true
			}
			return
		}
		defer cleanup()
	}
	for _, t := range tiers {
		if !t.direct {
			continue
		}
		fmt.Printf("\n== tier %s: go test (%s) ==\n", t.name, t.how)
		st := time.Now()
		args := append([]string{"-count=1", "-timeout", time.Until(o.deadline).Round(time.Second).String()}, t.pkgs...)
		g := goTest{args: s.runArgs(args...), stream: o.verbose || t.name != "kvm"}
		if a != nil {
			g.env = append([]string{"PTVMM_E2E_DIR=" + a.Dir}, o.env...)
		}
		t.t = g.run(ctx, s.root, os.Stdout)
		t.ran, t.el = true, time.Since(st)
	}
	if len(inHost) == 0 {
		return
	}
	var names []string
	for _, t := range tiers {
		if !t.direct {
			names = append(names, t.name)
		}
	}
	fmt.Printf("\n== tier %s: in the QEMU TCG test host, one boot for %d packages ==\n", strings.Join(names, " and "), len(inHost))
	st := time.Now()
	results := runInTestHost(ctx, a, a.Tests, short, o)
	el := time.Since(st)
	for _, t := range tiers {
		if t.direct {
			continue
		}
		t.ran, t.el = true, el
		if len(names) > 1 {
			t.how = strings.Replace(t.how, "test host", "test host (shared boots)", 1)
		}
		for _, pkg := range t.pkgs {
			r := results[pkg]
			if r == nil {
				t.t.failPackage(pkg, "no test binary was built")
				continue
			}
			pt := r.tally()
			status := "ok  "
			if pt.fail > 0 {
				status = "FAIL"
			}
			fmt.Printf("%s\t%s\t(test host) %s\n", status, pkg, pt.line())
			t.t.add(pt)
		}
	}
}

// summary prints each tier's counts, what was skipped where it matters,
// what failed, and the total as the last line.
func (s *suite) summary(w io.Writer, tiers []*tier) int {
	// Tests a tier skipped that a later tier ran (KVM tests skip in unit
	// and race without /dev/kvm, and run in the kvm tier).
	passedLater := map[string]bool{}
	for _, t := range tiers {
		if t.name == "kvm" || t.name == "e2e" {
			for _, p := range t.t.passed {
				passedLater[p] = true
			}
		}
	}
	var total tally
	fmt.Fprintf(w, "\ntesthost: test summary (total wall time %s)\n", time.Since(s.start).Round(time.Second))
	for _, t := range tiers {
		if !t.ran {
			continue
		}
		extra := ""
		if n := t.t.countSkippedIn(passedLater); n > 0 && (t.name == "unit" || t.name == "race") {
			extra = fmt.Sprintf(" (%d of them passed in the kvm or e2e tier)", n)
		}
		if t.t.flaky > 0 {
			extra += fmt.Sprintf(" (%d FLAKY: passed on a retry)", t.t.flaky)
		}
		fmt.Fprintf(w, "  %-5s %-46s %6s  %s%s\n", t.name, t.how, t.el.Round(time.Second), t.t.line(), extra)
		if t.name != "unit" && t.name != "race" {
			var list []string
			for _, sk := range t.t.skipped {
				list = append(list, fmt.Sprintf("%s %s: %s", pkgName(sk.pkg), sk.name, sk.reason))
			}
			printList(w, "skipped", list, 40)
		}
		printList(w, "failed", t.t.failed, 40)
		total.add(t.t)
	}
	fmt.Fprintln(w, total.line())
	if total.fail > 0 {
		return 1
	}
	return 0
}
