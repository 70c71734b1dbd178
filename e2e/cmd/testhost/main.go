// Command testhost runs ptvmm's end-to-end tests (make e2e) and the demo
// (make demo): directly on a host with VT-x/AMD-V, otherwise inside a QEMU
// TCG test host whose kvm-amd gives the tests a hardware-style /dev/kvm.
//
// The demo boots Debian's kernel with vmrun -v on a virtio-net NIC whose TAP
// has the host's address (host-ip=) and, when guest/kmod's ptvmm_ptnet is
// built, a ptnet NIC on switch vale0 joined to a second TAP; the guest agent
// shows uname, sets up eth0, pings the host and runs pktgen over ptnet.
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
	"strings"
	"time"

	"github.com/ptvmm/ptvmm/backends/tap"
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
	mode        string // auto, direct, qemu
	verbose     bool
}

func main() {
	var (
		mode    = flag.String("mode", "auto", "auto: the kvm tier directly when /dev/kvm is usable, the others when the host has VT-x/AMD-V, else in the QEMU test host; or direct, qemu")
		timeout = flag.Duration("timeout", 10*time.Minute, "hard limit for the test host runs (or the demo), from when they start")
		run     = flag.String("run", "", "run only tests matching this regexp (go test -run)")
		pkgs    = flag.String("pkgs", "./e2e", "comma-separated packages whose tests run in the test host (go list patterns); without -tiers")
		tiers   = flag.String("tiers", "", "comma-separated test tiers to run and summarise: unit, race, kvm, e2e (make test); empty: run -pkgs")
		kvmPkgs = flag.String("kvm-pkgs", "auto", "the kvm tier's packages (go list patterns, comma-separated); auto: those whose tests need /dev/kvm or a TAP")
		plan    = flag.String("plan", "", "run the test binaries of this plan file (the runner's mode inside the test host)")
		demo    = flag.Bool("demo", false, "boot the guest and show its console instead of running tests")
		command = flag.String("cmd", "", "run this command in the test host instead of the tests (debugging)")
		keep    = flag.Bool("keep", false, "keep the work directory")
		glog    = flag.Bool("guestlog", false, "keep the inner guest's kernel log on its console (slower)")
		verbose = flag.Bool("v", false, "print every test's output in the tiers run on this machine")
		mem     = flag.Int("mem", 4096, "test host memory in MiB")
		cpus    = flag.Int("smp", 1, "test host vCPUs (more than 1 makes QEMU 7.2's TCG nested SVM unreliable, see docs/testing.md)")
		machine = flag.String("machine", "q35", "test host qemu -machine")
		retries = flag.Int("retries", 0, "run tests that did not pass in the test host again, up to this many times, in a fresh test host (reported as FLAKY when they pass then)")
		silence = flag.Duration("silence", 5*time.Minute, "kill the test host when its console is silent this long (0: never); longer than the e2e tests' 4-minute guest timeout, so a stuck inner guest is reported by its test first")
		ttime   = flag.Duration("test-timeout", 10*time.Minute, "cap on one test binary's run in the test host (go test -timeout); 0: the rest of -timeout")
		single  = flag.Bool("tcg-single", false, "run the test host's vCPUs on one TCG thread (-accel tcg,thread=single)")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *plan != "" {
		steps, err := testhost.ReadPlan(*plan)
		check(err)
		os.Exit(testhost.RunPlan(ctx, steps, os.Stdout))
	}
	start := time.Now()
	o := options{run: *run, timeout: *timeout, machine: *machine, mem: *mem, cpus: *cpus, retries: *retries,
		silence: *silence, single: *single, testTimeout: *ttime, mode: *mode, verbose: *verbose}
	switch o.mode {
	case "auto", "direct", "qemu":
	default:
		fatalf("-mode %q: want auto, direct or qemu", o.mode)
	}
	if *glog {
		o.env = append(o.env, testhost.GuestLogEnv+"=1")
	}
	root, err := testhost.RepoRoot()
	check(err)

	var code int
	switch {
	case *demo || *command != "":
		code = runOne(ctx, root, o, *demo, *command, *keep)
	default:
		var list []string
		if *tiers != "" {
			list = strings.Split(*tiers, ",")
		}
		s := &suite{root: root, o: o, keep: *keep, kvmPkgs: *kvmPkgs, pkgs: strings.Split(*pkgs, ","), start: start}
		code = s.run(ctx, list) // its last line is the summary
		os.Exit(code)
	}
	fmt.Printf("testhost: total wall time %.1fs\n", time.Since(start).Seconds())
	os.Exit(code)
}

// runOne boots the demo or -cmd: in the test host, or here with hardware KVM.
func runOne(ctx context.Context, root string, o options, demo bool, command string, keep bool) int {
	direct := o.mode == "direct"
	if o.mode == "auto" {
		ok, why := testhost.HardwareKVM()
		direct = ok
		if !ok {
			fmt.Printf("testhost: %s; using the QEMU TCG test host\n", why)
		}
	}
	o.deadline = time.Now().Add(o.timeout)
	a, cleanup, err := prepare(ctx, root, nil, keep)
	check(err)
	defer cleanup()
	if demo {
		command = demoCommand(a, direct)
	}
	return runCommand(ctx, a, command, direct, o)
}

// prepare builds the assets (and the test binaries of pkgs with the
// runner) in a new work directory; cleanup removes it unless keep.
func prepare(ctx context.Context, root string, pkgs []string, keep bool) (*testhost.Assets, func(), error) {
	kdir, err := testhost.KernelDir()
	if err != nil {
		return nil, nil, err
	}
	k, err := testhost.LoadKernel(kdir)
	if err != nil {
		return nil, nil, err
	}
	work, err := os.MkdirTemp("", "ptvmm-e2e-")
	if err != nil {
		return nil, nil, fmt.Errorf("testhost: %w", err)
	}
	cleanup := func() {
		if !keep {
			os.RemoveAll(work)
		}
	}
	if keep {
		fmt.Println("testhost: work directory", work)
	}
	popts := testhost.Options{Root: root, Dir: work, Kernel: k, Log: os.Stdout, TestPackages: pkgs}
	if len(pkgs) > 0 {
		popts.Runner = runnerPkg
	}
	a, err := testhost.Prepare(ctx, popts)
	if err != nil {
		os.RemoveAll(work)
		return nil, nil, err
	}
	return a, cleanup, nil
}

// runnerPkg is this command, which runs a plan in the test host (-plan).
const runnerPkg = "./e2e/cmd/testhost"

// The demo's network: the guest's eth0 (virtio-net) on TAP demoTap, whose
// host side vmrun addresses (host-ip=); with ptvmm_ptnet built, a ptnet NIC
// on switch vale0, which demoSwitchTap joins to the host stack.
const (
	demoTap       = "ptdemo0"
	demoSwitchTap = "ptdemo1"
	demoHostIP    = "10.0.2.2/24"
	demoGuestIP   = "10.0.2.15/24"
	demoFrames    = 200000
)

// demoCommand boots the inner guest with vmrun: it shows its kernel, pings
// the host over virtio-net and sends demoFrames frames by passthrough, and
// prints the figures (ping's round trips, pktgen's Mpps and kicks per frame).
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
	const agent = "/bin/ptvmm-agent "
	cmds := []string{agent + "uname -a"}
	// One vCPU: nested SVM under TCG is more reliable with one (docs/testing.md).
	args := []string{vmrun, "-v", "-cpus", "1", "-m", "256M",
		"-kernel", filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		"-initrd", filepath.Join(dir, testhost.AssetDemoInit)}
	ptnet := false
	// The test host runs as root with tun loaded; here, TAPs need CAP_NET_ADMIN.
	if ok, why := tap.CanCreate(); direct && !ok {
		fmt.Printf("testhost: demo: no network part, cannot create TAPs here: %s\n", why)
	} else {
		args = append(args, "-net", "virtio,tap="+demoTap+",host-ip="+demoHostIP)
		host, _, _ := strings.Cut(demoHostIP, "/")
		cmds = append(cmds, agent+"ifconfig eth0 "+demoGuestIP, agent+"ping -c 5 "+host)
		if why := testhost.KmodMissing(a.Kernel, testhost.PtnetKmod); why != "" {
			fmt.Printf("testhost: demo: no passthrough part, %s\n", why)
		} else {
			ptnet = true
			args = append(args, "-switch-tap", "vale0:"+demoSwitchTap, "-s", "4,ptnet,vale0:vm1")
			cmds = append(cmds, fmt.Sprintf("%spktgen -mode tx -count %d", agent, demoFrames))
		}
	}
	// The demo shows the guest's whole boot log and vmrun's timings (-v).
	os.Setenv(testhost.GuestLogEnv, "1")
	args = append(args, "-append", testhost.GuestAppend())
	check(a.PackDemo(cmds, ptnet))
	fmt.Printf("testhost: demo guest runs: %s\n", strings.Join(cmds, "; "))
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

// runCommand runs a command (demo, -cmd) in the test host or here.
func runCommand(ctx context.Context, a *testhost.Assets, command string, direct bool, o options) int {
	if direct {
		return runHost(ctx, a, o, "sh", "-c", command)
	}
	res, ok := boot(ctx, a, testhost.HostSpec{Cmd: command, Env: o.env}, o)
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

// boot packs the test host for h and runs it; ok is false when the boot
// itself failed (timeout, qemu error, agent never ready).
func boot(ctx context.Context, a *testhost.Assets, h testhost.HostSpec, o options) (*testhost.Result, bool) {
	t := time.Now()
	initrd := filepath.Join(a.Dir, "testhost.cpio")
	if err := a.WriteTestHostInitramfs(initrd, h); err != nil {
		fmt.Println(err)
		return nil, false
	}
	st, err := os.Stat(initrd)
	if err != nil {
		fmt.Println("testhost:", err)
		return nil, false
	}
	fmt.Printf("testhost: pack test host initramfs, %d MiB (%.1fs)\n", st.Size()>>20, time.Since(t).Seconds())
	if h.Cmd != "" {
		fmt.Printf("testhost: test host command: %s\n", h.Cmd)
	}
	for _, s := range h.Plan {
		fmt.Printf("testhost: test host runs %s %s\n", s.Path, strings.Join(s.Args, " "))
	}
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
