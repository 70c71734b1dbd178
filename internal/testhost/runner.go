package testhost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
)

// RunStep is one test binary a RunPlan runs in the test host.
type RunStep struct {
	Pkg  string   // import path, for the console markers
	Path string   // the binary, as seen where the plan runs
	Args []string // e.g. -test.v -test.timeout=8m
	Dir  string   // working directory (the package's testdata parent); "/" when empty
}

// PlanPath is where WriteTestHostInitramfs puts the plan in the test host.
const PlanPath = TestHostAssets + "/plan.json"

// AssetRunner is the static runner binary in an assets directory and in the
// test host (see Options.Runner).
const AssetRunner = "runner"

// PlanFlag is the runner's flag naming a plan file: the test host's command
// is "<runner> -plan PlanPath".
const PlanFlag = "-plan"

// ReadPlan reads a plan file written by WriteTestHostInitramfs.
func ReadPlan(path string) ([]RunStep, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("testhost: plan: %w", err)
	}
	var steps []RunStep
	if err := json.Unmarshal(b, &steps); err != nil {
		return nil, fmt.Errorf("testhost: plan %s: %w", path, err)
	}
	return steps, nil
}

// RunPlan runs the steps one after the other, each to its end whatever the
// others did, with out as their stdout and stderr, and prints a marker line
// before and after each (see Result.Packages). It returns 0 when every
// binary exited 0, else 1. Not safe for concurrent use with the same out.
func RunPlan(ctx context.Context, steps []RunStep, out io.Writer) int {
	code := 0
	for _, s := range steps {
		// One write per marker: the console must not split it.
		fmt.Fprintln(out, runStartLine(s.Pkg))
		status := runStep(ctx, s, out)
		fmt.Fprintln(out, runDoneLine(s.Pkg, status))
		if status != 0 {
			code = 1
		}
	}
	return code
}

// runStep runs one binary and returns its exit status (as a shell would for
// a signal: 128+n; 127 when it cannot be started).
func runStep(ctx context.Context, s RunStep, out io.Writer) int {
	cmd := exec.CommandContext(ctx, s.Path, s.Args...)
	cmd.Dir = s.Dir
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	fmt.Fprintf(out, "ptvmm-testhost: %s: %v\n", s.Pkg, err)
	return 127
}
