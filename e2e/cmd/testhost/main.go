// Command testhost runs ptvmm's end-to-end tests (make e2e) and the demo
// (make demo): directly on a host with VT-x/AMD-V, otherwise inside a QEMU
// TCG test host whose kvm-amd gives the tests a hardware-style /dev/kvm.
//
// It prints the tests' -test.v output, a per-test summary with wall times,
// the test host boot time, and go test's "ok"/"FAIL" line per package; it
// exits 1 on any failure and never hangs (-timeout kills qemu and shows the
// last console lines).
//
// -pkgs runs other packages' tests in the test host too (one boot each), for
// example the KVM tests on a hardware-style KVM: -pkgs=./e2e,./vmm/... .
// The binaries run as root with / as the working directory (no testdata).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/ptvmm/ptvmm/internal/testhost"
)

type options struct {
	run      string
	env      []string
	timeout  time.Duration
	deadline time.Time
	machine  string
	mem      int
	cpus     int
	retries  int
	silence  time.Duration
	// testTimeout caps one test binary's -test.timeout in the test host.
	testTimeout time.Duration
	single      bool
}

func main() {
	var (
		mode    = flag.String("mode", "auto", "auto: direct when the host has VT-x/AMD-V, else qemu; or direct, qemu")
		timeout = flag.Duration("timeout", 10*time.Minute, "hard limit for the whole run")
		run     = flag.String("run", "", "run only tests matching this regexp (go test -run)")
		pkgs    = flag.String("pkgs", "./e2e", "comma-separated packages whose tests run (go list patterns)")
		demo    = flag.Bool("demo", false, "boot the guest and show its console instead of running tests")
		command = flag.String("cmd", "", "run this command in the test host instead of the tests (debugging)")
		keep    = flag.Bool("keep", false, "keep the work directory")
		glog    = flag.Bool("guestlog", false, "keep the inner guest's kernel log on its console (slower)")
		mem     = flag.Int("mem", 4096, "test host memory in MiB")
		cpus    = flag.Int("smp", 1, "test host vCPUs (more than 1 makes QEMU 7.2's TCG nested SVM unreliable, see README)")
		machine = flag.String("machine", "q35", "test host qemu -machine")
		retries = flag.Int("retries", 0, "run tests that did not pass again, up to this many times, in a fresh test host (reported as FLAKY when they pass then)")
		silence = flag.Duration("silence", 5*time.Minute, "kill the test host when its console is silent this long (0: never); longer than the e2e tests' 4-minute guest timeout, so a stuck inner guest is reported by its test first")
		ttime   = flag.Duration("test-timeout", 10*time.Minute, "cap on one test binary's run in the test host (go test -timeout); 0: the rest of -timeout")
		single  = flag.Bool("tcg-single", false, "run the test host's vCPUs on one TCG thread (-accel tcg,thread=single)")
	)
	flag.Parse()
	start := time.Now()
	o := options{run: *run, timeout: *timeout, deadline: start.Add(*timeout), machine: *machine, mem: *mem, cpus: *cpus, retries: *retries,
		silence: *silence, single: *single, testTimeout: *ttime}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	root, err := testhost.RepoRoot()
	check(err)
	kdir, err := testhost.KernelDir()
	check(err)
	k, err := testhost.LoadKernel(kdir)
	check(err)
	work, err := os.MkdirTemp("", "ptvmm-e2e-")
	check(err)
	if *keep {
		fmt.Println("testhost: work directory", work)
	}

	direct := *mode == "direct"
	if *mode == "auto" {
		ok, why := testhost.HardwareKVM()
		direct = ok
		if !ok {
			fmt.Printf("testhost: %s; using the QEMU TCG test host\n", why)
		}
	}
	tests := !*demo && *command == ""
	patterns := strings.Split(*pkgs, ",")
	popts := testhost.Options{Root: root, Dir: work, Kernel: k, Log: os.Stdout}
	if tests && !direct {
		popts.TestPackages = patterns
	}
	a, err := testhost.Prepare(ctx, popts)
	if err != nil {
		os.RemoveAll(work)
		fatalf("%v", err)
	}

	if *glog {
		o.env = append(o.env, testhost.GuestLogEnv+"=1")
	}
	var code int
	switch {
	case *demo:
		code = runCommand(ctx, a, demoCommand(a, direct), direct, o)
	case *command != "":
		code = runCommand(ctx, a, *command, direct, o)
	case direct:
		code = runDirectTests(ctx, a, patterns, o)
	default:
		code = 0
		for _, b := range a.Tests {
			if c := runTestBinary(ctx, a, b, o); c != 0 {
				code = c
			}
		}
	}
	fmt.Printf("testhost: total wall time %.1fs\n", time.Since(start).Seconds())
	if !*keep {
		os.RemoveAll(work)
	}
	os.Exit(code)
}

// demoCommand boots the inner guest with vmrun and a visible command.
func demoCommand(a *testhost.Assets, direct bool) string {
	if a.VMRun == "" {
		fatalf("demo: the repository has no cmd/vmrun yet")
	}
	dir := a.Dir
	vmrun := a.VMRun
	if !direct {
		dir = testhost.TestHostAssets
		vmrun = filepath.Join(dir, testhost.AssetVMRun)
	}
	// The demo shows the guest's whole boot log and vmrun's timings (-v).
	os.Setenv(testhost.GuestLogEnv, "1")
	args := testhost.VMRunArgs(vmrun, dir, "/bin/ptvmm-agent uname -a")
	args = append(args[:1], append([]string{"-v"}, args[1:]...)...)
	return shellJoin(args)
}

// shellJoin quotes args for the agent's command splitter (POSIX-like).
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// runDirectTests runs go test on this host, which has hardware KVM.
func runDirectTests(ctx context.Context, a *testhost.Assets, patterns []string, o options) int {
	args := []string{"test", "-v", "-count=1", "-timeout", o.timeout.String()}
	if o.run != "" {
		args = append(args, "-run", o.run)
	}
	return runHost(ctx, a, o, "go", append(args, patterns...)...)
}

// runCommand runs a command (demo, -cmd) in the test host or here.
func runCommand(ctx context.Context, a *testhost.Assets, command string, direct bool, o options) int {
	if direct {
		return runHost(ctx, a, o, "sh", "-c", command)
	}
	res, ok := boot(ctx, a, command, o)
	printSummary(res)
	if !ok || res == nil || res.ExitStatus != 0 {
		fmt.Println("testhost: FAIL")
		return 1
	}
	fmt.Println("testhost: ok")
	return 0
}

func runHost(ctx context.Context, a *testhost.Assets, o options, name string, args ...string) int {
	ctx, cancel := context.WithDeadline(ctx, o.deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = a.Root
	cmd.Env = append(append(os.Environ(), "PTVMM_E2E_DIR="+a.Dir), o.env...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Println("testhost:", err)
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			return ee.ExitCode()
		}
		return 1
	}
	return 0
}

// runTestBinary boots the test host running one package's test binary and
// prints go test's summary line for it. With o.retries, tests that did not pass
// (failed, or never reached because the test host died) run again in a fresh test
// host; a test that passes only then is reported as FLAKY, never silently.
func runTestBinary(ctx context.Context, a *testhost.Assets, b testhost.TestBinary, o options) int {
	t := time.Now()
	res, ok := runTestsOnce(ctx, a, b, o, "")
	for try := 0; !ok && try < o.retries && res != nil && time.Until(o.deadline) > 2*time.Minute; try++ {
		failed, skip := splitResults(res)
		fmt.Printf("testhost: retrying in a fresh test host (failed: %s); the %d tests that passed are skipped\n",
			strings.Join(failed, ", "), len(skip))
		skipRE := ""
		if len(skip) > 0 {
			skipRE = "^(" + strings.Join(skip, "|") + ")$"
		}
		if res, ok = runTestsOnce(ctx, a, b, o, skipRE); ok {
			fmt.Printf("testhost: FLAKY: %s failed on the first run and passed on the retry\n", strings.Join(failed, ", "))
		}
	}
	el := time.Since(t).Seconds()
	if !ok {
		fmt.Printf("FAIL\t%s\t%.3fs\n", b.Pkg, el)
		return 1
	}
	fmt.Printf("ok  \t%s\t%.3fs\n", b.Pkg, el)
	return 0
}

// runTestsOnce boots one test host for the binary; ok means every test it ran
// passed or skipped and the binary exited 0.
func runTestsOnce(ctx context.Context, a *testhost.Assets, b testhost.TestBinary, o options, skip string) (*testhost.Result, bool) {
	command := testCommand(b, o, skip, time.Until(o.deadline))
	res, ok := boot(ctx, a, command, o, b)
	printSummary(res)
	if res != nil {
		for _, tr := range res.Tests {
			if tr.Status == "FAIL" {
				ok = false
			}
		}
		if len(res.Tests) == 0 {
			fmt.Println("  no test results on the console")
			ok = false
		}
		if res.ExitStatus != 0 {
			ok = false
		}
	}
	return res, ok
}

// testCommand is the test host's command for b with remaining time left.
func testCommand(b testhost.TestBinary, o options, skip string, left time.Duration) string {
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
	command := fmt.Sprintf("%s -test.v -test.timeout=%s", b.GuestPath(), inner.Round(time.Second))
	if o.run != "" {
		command += " " + shellJoin([]string{"-test.run=" + o.run})
	}
	if skip != "" {
		command += " " + shellJoin([]string{"-test.skip=" + skip})
	}
	return command
}

// splitResults lists the top-level tests that failed and those that passed or
// skipped (to skip on a retry). Tests never reached are in neither list.
func splitResults(res *testhost.Result) (failed, done []string) {
	for _, tr := range res.Tests {
		if strings.Contains(tr.Name, "/") {
			continue
		}
		if tr.Status == "FAIL" {
			failed = append(failed, tr.Name)
		} else {
			done = append(done, regexp.QuoteMeta(tr.Name))
		}
	}
	if len(failed) == 0 {
		failed = []string{"(none reported: the test host stopped early)"}
	}
	return failed, done
}

// boot packs the test host for command and runs it; ok is false when the
// boot itself failed (timeout, qemu error, agent never ready).
func boot(ctx context.Context, a *testhost.Assets, command string, o options, tests ...testhost.TestBinary) (*testhost.Result, bool) {
	t := time.Now()
	initrd := filepath.Join(a.Dir, "testhost.cpio")
	check(a.WriteTestHostInitramfs(initrd, command, o.env, tests...))
	st, err := os.Stat(initrd)
	check(err)
	fmt.Printf("testhost: pack test host initramfs, %d MiB (%.1fs)\n", st.Size()>>20, time.Since(t).Seconds())
	fmt.Printf("testhost: test host command: %s\n", command)
	remaining := time.Until(o.deadline)
	if remaining <= 0 {
		fmt.Println("testhost: no time left (-timeout)")
		return nil, false
	}
	cfg := testhost.Config{
		Kernel:       a.Kernel.Vmlinuz(),
		Initrd:       initrd,
		Append:       testhost.Cmdline(),
		Machine:      o.machine,
		MemMB:        o.mem,
		CPUs:         o.cpus,
		Timeout:      remaining,
		Silence:      o.silence,
		SingleThread: o.single,
		Console:      os.Stdout,
	}
	fmt.Printf("testhost: booting qemu-system-x86_64 %s\n", strings.Join(cfg.Args(), " "))
	res, err := testhost.Boot(ctx, cfg)
	if err != nil {
		fmt.Println(err)
	}
	ok := err == nil && res != nil && res.Ready > 0
	return res, ok
}

func printSummary(res *testhost.Result) {
	fmt.Println()
	fmt.Println("testhost: summary")
	if res == nil {
		return
	}
	if res.Ready > 0 {
		fmt.Printf("  test host boot (qemu start to agent ready): %.1fs\n", res.Ready.Seconds())
	} else {
		fmt.Println("  test host agent never became ready")
	}
	for _, tr := range res.Tests {
		fmt.Printf("  %-4s %-50s %7.2fs\n", tr.Status, tr.Name, tr.Elapsed.Seconds())
	}
	fmt.Printf("  command exit status in the test host: %d\n", res.ExitStatus)
	fmt.Printf("  qemu wall time: %.1fs\n", res.Elapsed.Seconds())
}

func check(err error) {
	if err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "testhost: "+format+"\n", args...)
	os.Exit(1)
}
