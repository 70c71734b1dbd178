package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/ptvmm/ptvmm/internal/testhost"
)

// testEvent is one `go test -json` event (cmd/test2json), or one of the go
// command's build events.
type testEvent struct {
	Action      string
	Package     string
	Test        string
	Elapsed     float64
	Output      string
	ImportPath  string // build-output, build-fail
	FailedBuild string
}

// goTest is one `go test -json` run on this machine.
type goTest struct {
	args   []string // after "go test -json"
	env    []string // added to the environment
	stream bool     // print every test's output as it comes; else a line per package and failures' output
}

// run runs it and counts every test and subtest. A package that fails
// without a failing test (build error, crash, timeout) counts as one
// failure, as does a go command that fails without any.
func (g goTest) run(ctx context.Context, root string, out io.Writer) tally {
	args := append([]string{"test", "-json"}, g.args...)
	fmt.Fprintf(out, "testhost: go %s\n", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), g.env...)
	cmd.Stderr = out
	pipe, err := cmd.StdoutPipe()
	var t tally
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		t.failPackage("go test", err.Error())
		return t
	}
	p := newJSONParser(out, g.stream)
	sc := bufio.NewScanner(pipe)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		p.line(sc.Bytes())
	}
	werr := cmd.Wait()
	t = p.total
	if werr != nil && t.fail == 0 {
		t.failPackage("go test", werr.Error())
	}
	return t
}

// jsonParser follows `go test -json` output.
type jsonParser struct {
	out    io.Writer
	stream bool
	pkgs   map[string]*pkgState
	total  tally
}

type pkgState struct {
	t      tally
	output map[string][]string // test name ("" for the package) -> its output
}

func newJSONParser(out io.Writer, stream bool) *jsonParser {
	return &jsonParser{out: out, stream: stream, pkgs: map[string]*pkgState{}}
}

func (p *jsonParser) state(pkg string) *pkgState {
	s := p.pkgs[pkg]
	if s == nil {
		s = &pkgState{output: map[string][]string{}}
		p.pkgs[pkg] = s
	}
	return s
}

func (p *jsonParser) line(b []byte) {
	var e testEvent
	if len(b) == 0 || b[0] != '{' || json.Unmarshal(b, &e) != nil {
		fmt.Fprintf(p.out, "%s\n", b) // the go command's own messages
		return
	}
	switch e.Action {
	case "build-output":
		fmt.Fprint(p.out, e.Output)
		return
	case "build-fail", "start", "run", "pause", "cont", "bench":
		return
	}
	s := p.state(e.Package)
	switch e.Action {
	case "output":
		s.output[e.Test] = append(s.output[e.Test], e.Output)
		if p.stream {
			fmt.Fprint(p.out, e.Output)
		}
	case "pass", "fail", "skip":
		if e.Test != "" {
			s.t.count(e.Package, e.Test, e.Action, skipReason(s.output[e.Test]))
			return
		}
		p.endPackage(e, s)
	}
}

// endPackage prints the package's line (and its failures' output) and adds
// its counts to the total.
func (p *jsonParser) endPackage(e testEvent, s *pkgState) {
	if e.Action == "skip" {
		return // no test files
	}
	el := time.Duration(e.Elapsed * float64(time.Second)).Round(time.Millisecond)
	counts := fmt.Sprintf("%d passed, %d skipped", s.t.pass, s.t.skip)
	if e.Action == "pass" {
		fmt.Fprintf(p.out, "ok  \t%s\t%s\t%s\n", e.Package, el, counts)
		p.total.add(s.t)
		return
	}
	if !p.stream {
		for _, f := range s.t.failed {
			name := f[strings.IndexByte(f, ' ')+1:]
			fmt.Fprint(p.out, strings.Join(s.output[name], ""))
		}
		for _, l := range s.output[""] {
			// go test's own verdict lines: ours follows.
			if l != "FAIL\n" && !strings.HasPrefix(l, "FAIL\t"+e.Package+"\t") {
				fmt.Fprint(p.out, l)
			}
		}
	}
	if s.t.fail == 0 {
		why := "failed without a failing test"
		if e.FailedBuild != "" {
			why = "build failed"
		}
		s.t.failPackage(e.Package, why)
	}
	fmt.Fprintf(p.out, "FAIL\t%s\t%s\t%d failed, %s\n", e.Package, el, s.t.fail, counts)
	p.total.add(s.t)
}

// skipReason is a skipped test's last log line (its t.Skip message).
func skipReason(output []string) string {
	for i := len(output) - 1; i >= 0; i-- {
		if m, ok := testhost.LogMessage(output[i]); ok {
			return m
		}
	}
	return ""
}
