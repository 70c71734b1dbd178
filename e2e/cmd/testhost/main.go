// Command testhost runs ptvmm's end-to-end tests (make e2e) and the demo
// (make demo): directly on a host with VT-x/AMD-V, otherwise inside a QEMU
// TCG test host whose kvm-amd gives the tests a hardware-style /dev/kvm.
//
// It prints the tests' -test.v output, a per-test summary with wall times,
// the test host boot time, and a go test style "ok"/"FAIL" line; it exits 1
// on any failure and never hangs (-timeout kills qemu and shows the last
// console lines).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/ptvmm/ptvmm/internal/testhost"
)

const e2eImport = "github.com/ptvmm/ptvmm/e2e"

func main() {
	var (
		mode    = flag.String("mode", "auto", "auto: direct when the host has VT-x/AMD-V, else qemu; or direct, qemu")
		timeout = flag.Duration("timeout", 10*time.Minute, "hard limit for the whole run")
		run     = flag.String("run", "", "run only tests matching this regexp (go test -run)")
		demo    = flag.Bool("demo", false, "boot the guest and show its console instead of running tests")
		command = flag.String("cmd", "", "run this command in the test host instead of the tests (debugging)")
		keep    = flag.Bool("keep", false, "keep the work directory")
		glog    = flag.Bool("guestlog", false, "keep the inner guest's kernel log on its console (slower)")
		mem     = flag.Int("mem", 4096, "test host memory in MiB")
		cpus    = flag.Int("smp", 2, "test host vCPUs")
		machine = flag.String("machine", "q35", "test host qemu -machine")
	)
	flag.Parse()
	start := time.Now()
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
	} else {
		defer os.RemoveAll(work)
	}

	direct := *mode == "direct"
	if *mode == "auto" {
		ok, why := testhost.HardwareKVM()
		direct = ok
		if !ok {
			fmt.Printf("testhost: %s; using the QEMU TCG test host\n", why)
		}
	}

	a, err := testhost.Prepare(ctx, testhost.Options{
		Root: root, Dir: work, Kernel: k, TestBinary: !direct, Log: os.Stdout,
	})
	check(err)

	var env []string
	if *glog {
		env = append(env, testhost.GuestLogEnv+"=1")
	}
	var guestCmd string
	switch {
	case *demo:
		guestCmd = demoCommand(a, direct)
	case *command != "":
		guestCmd = *command
	}
	var code int
	if direct {
		code = runDirect(ctx, a, *run, guestCmd, env, *timeout)
	} else {
		code = runQEMU(ctx, a, *run, guestCmd, env, *timeout, *machine, *mem, *cpus)
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

func runDirect(ctx context.Context, a *testhost.Assets, run, guestCmd string, env []string, timeout time.Duration) int {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var cmd *exec.Cmd
	if guestCmd != "" {
		cmd = exec.CommandContext(ctx, "sh", "-c", guestCmd)
	} else {
		args := []string{"test", "-v", "-count=1", "-timeout", timeout.String()}
		if run != "" {
			args = append(args, "-run", run)
		}
		cmd = exec.CommandContext(ctx, "go", append(args, "./e2e")...)
		cmd.Dir = a.Root
	}
	cmd.Env = append(append(os.Environ(), "PTVMM_E2E_DIR="+a.Dir), env...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Println("testhost:", err)
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() > 0 {
			return ee.ExitCode()
		}
		return 1
	}
	return 0
}

func runQEMU(ctx context.Context, a *testhost.Assets, run, guestCmd string, env []string, timeout time.Duration, machine string, mem, cpus int) int {
	t := time.Now()
	tests := guestCmd == ""
	if tests {
		// Leave the test binary a minute less than qemu so it reports its own timeout.
		inner := timeout - time.Minute
		if inner < time.Minute {
			inner = timeout / 2
		}
		guestCmd = fmt.Sprintf("%s/e2e.test -test.v -test.timeout=%s", testhost.TestHostAssets, inner)
		if run != "" {
			guestCmd += " " + shellJoin([]string{"-test.run=" + run})
		}
	}
	initrd := filepath.Join(a.Dir, "testhost.cpio")
	check(a.WriteTestHostInitramfs(initrd, guestCmd, env))
	st, err := os.Stat(initrd)
	check(err)
	fmt.Printf("testhost: pack test host initramfs, %d MiB (%.1fs)\n", st.Size()>>20, time.Since(t).Seconds())
	fmt.Printf("testhost: test host command: %s\n", guestCmd)
	cfg := testhost.Config{
		Kernel:  a.Kernel.Vmlinuz(),
		Initrd:  initrd,
		Append:  testhost.Cmdline(),
		Machine: machine,
		MemMB:   mem,
		CPUs:    cpus,
		Timeout: timeout,
		Console: os.Stdout,
	}
	fmt.Printf("testhost: booting qemu-system-x86_64 %s\n", strings.Join(cfg.Args(), " "))
	res, err := testhost.Boot(ctx, cfg)
	ok := err == nil
	if err != nil {
		fmt.Println(err)
	}
	fmt.Println()
	fmt.Println("testhost: summary")
	if res != nil {
		if res.Ready > 0 {
			fmt.Printf("  test host boot (qemu start to agent ready): %.1fs\n", res.Ready.Seconds())
		} else {
			fmt.Println("  test host agent never became ready")
			ok = false
		}
		for _, tr := range res.Tests {
			fmt.Printf("  %-4s %-50s %7.2fs\n", tr.Status, tr.Name, tr.Elapsed.Seconds())
			if tr.Status == "FAIL" {
				ok = false
			}
		}
		if tests && len(res.Tests) == 0 {
			fmt.Println("  no test results on the console")
			ok = false
		}
		fmt.Printf("  command exit status in the test host: %d\n", res.ExitStatus)
		if res.ExitStatus != 0 {
			ok = false
		}
		fmt.Printf("  qemu wall time: %.1fs\n", res.Elapsed.Seconds())
	}
	el := time.Since(t).Seconds()
	if !tests {
		if !ok {
			fmt.Printf("testhost: FAIL (%.1fs)\n", el)
			return 1
		}
		fmt.Printf("testhost: ok (%.1fs)\n", el)
		return 0
	}
	if !ok {
		fmt.Printf("FAIL\t%s\t%.3fs\n", e2eImport, el)
		return 1
	}
	fmt.Printf("ok  \t%s\t%.3fs\n", e2eImport, el)
	return 0
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
