package testhost

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Config describes one test host boot.
type Config struct {
	QEMU    string        // binary; default qemu-system-x86_64
	Kernel  string        // bzImage
	Initrd  string        // initramfs with the agent as /init
	Append  string        // kernel command line
	Machine string        // qemu -machine; default q35
	MemMB   int           // default 4096
	CPUs    int           // default 2
	Timeout time.Duration // hard limit for the whole boot; default 10 minutes
	// Silence kills qemu when its console has printed nothing for this long
	// (0: no limit). A test host whose own kernel died prints nothing more,
	// and waiting for Timeout would leave no time to retry.
	Silence time.Duration
	// SingleThread runs all test host vCPUs on one TCG thread
	// (-accel tcg,thread=single) instead of one thread each.
	SingleThread bool
	Console      io.Writer // receives every console line as it arrives; may be nil
	ExtraArgs    []string  // appended to the qemu command line
}

// Result is what one boot showed on its console.
type Result struct {
	Ready      time.Duration // qemu start to the agent's ready line; 0 if never seen
	Silent     bool          // killed by Config.Silence
	Elapsed    time.Duration // qemu start to exit
	ExitStatus int           // the agent's command status; -1 if never reported
	Tests      []TestResult
	// Packages are the test binaries a RunPlan started, in order; the last
	// one's ExitStatus stays -1 when the test host died while it ran.
	Packages []PackageRun
	Tail     []string // the last console lines

	mu sync.Mutex // guards Silent while Boot runs

	// Parsing state (Boot's goroutine only): the test whose output follows
	// and each test's last log line, for skip reasons.
	curTest string
	lastLog map[string]string
}

// TailLines is how many console lines a Result keeps.
const TailLines = 60

// Args is the qemu command line for cfg (defaults applied).
func (cfg Config) Args() []string {
	mem, cpus := cfg.MemMB, cfg.CPUs
	if mem == 0 {
		mem = 4096
	}
	if cpus == 0 {
		cpus = 1
	}
	machine := cfg.Machine
	if machine == "" {
		machine = "q35"
	}
	thread := "multi"
	if cfg.SingleThread {
		thread = "single"
	}
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", machine, "-accel", "tcg,thread=" + thread + ",tb-size=512", "-cpu", "max",
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-no-reboot",
		"-kernel", cfg.Kernel, "-initrd", cfg.Initrd, "-append", cfg.Append,
	}
	return append(args, cfg.ExtraArgs...)
}

// Boot runs qemu until the guest powers off, ctx ends or cfg.Timeout passes.
// It never hangs on a stuck guest: on timeout it kills qemu and returns an
// error carrying the last console lines. A clean power-off returns a nil
// error; the caller judges ExitStatus and Tests.
func Boot(ctx context.Context, cfg Config) (*Result, error) {
	bin := cfg.QEMU
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	if _, err := exec.LookPath(bin); err != nil {
		return nil, fmt.Errorf("testhost: %s not found; install it (Debian: apt-get install qemu-system-x86): %w", bin, err)
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	cmd := exec.CommandContext(ctx, bin, cfg.Args()...)
	// Own process group, and die with us: a killed runner leaves no qemu.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("testhost: qemu stdout: %w", err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testhost: start %s: %w", bin, err)
	}
	res := &Result{ExitStatus: -1}
	var lines chan struct{}
	if cfg.Silence > 0 {
		lines = make(chan struct{}, 1)
		done := make(chan struct{})
		defer close(done)
		go res.watch(lines, done, cfg.Silence, cancel)
	}
	res.scan(out, start, cfg.Console, lines) // until stdout closes: qemu exited or was killed
	werr := cmd.Wait()
	res.Elapsed = time.Since(start)

	switch {
	case res.silent():
		return res, fmt.Errorf("testhost: the test host printed nothing for %s; qemu killed; last console lines:\n%s",
			cfg.Silence, res.tail())
	case ctx.Err() != nil:
		why := "timed out after " + timeout.String()
		if errors.Is(ctx.Err(), context.Canceled) {
			why = "cancelled"
		}
		return res, fmt.Errorf("testhost: qemu %s (killed); last console lines:\n%s", why, res.tail())
	case werr != nil:
		return res, fmt.Errorf("testhost: qemu: %w: %s\nlast console lines:\n%s",
			werr, strings.TrimSpace(stderr.String()), res.tail())
	}
	return res, nil
}

// watch calls kill when no line arrives on lines for silence.
func (r *Result) watch(lines <-chan struct{}, done <-chan struct{}, silence time.Duration, kill func()) {
	t := time.NewTimer(silence)
	defer t.Stop()
	for {
		select {
		case <-lines:
			t.Reset(silence)
		case <-done:
			return
		case <-t.C:
			r.mu.Lock()
			r.Silent = true
			r.mu.Unlock()
			kill()
			return
		}
	}
}

func (r *Result) silent() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Silent
}

func (r *Result) scan(out io.Reader, start time.Time, console io.Writer, lines chan<- struct{}) {
	br := bufio.NewReaderSize(out, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" && lines != nil {
			select {
			case lines <- struct{}{}:
			default:
			}
		}
		if line != "" {
			line = strings.TrimRight(line, "\r\n")
			r.line(line, time.Since(start))
			if console != nil {
				fmt.Fprintln(console, line)
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *Result) line(line string, at time.Duration) {
	r.Tail = append(r.Tail, line)
	if len(r.Tail) > TailLines {
		r.Tail = r.Tail[len(r.Tail)-TailLines:]
	}
	if r.Ready == 0 && strings.Contains(line, ReadyLine) {
		r.Ready = at
	}
	if n, ok := ParseExitStatus(line); ok {
		r.ExitStatus = n
	}
	if pkg, ok := parseRunStart(line); ok {
		r.Packages = append(r.Packages, PackageRun{Pkg: pkg, ExitStatus: -1})
		r.curTest, r.lastLog = "", nil
		return
	}
	if pkg, n, ok := parseRunDone(line); ok {
		if i := len(r.Packages) - 1; i >= 0 && r.Packages[i].Pkg == pkg {
			r.Packages[i].ExitStatus = n
		}
		return
	}
	if m := testNameRE.FindStringSubmatch(line); m != nil {
		r.curTest = m[1]
		return
	}
	if m := testLogRE.FindStringSubmatch(line); m != nil && r.curTest != "" {
		if r.lastLog == nil {
			r.lastLog = map[string]string{}
		}
		r.lastLog[r.curTest] = m[1]
		return
	}
	if t, ok := ParseResult(line); ok {
		if n := len(r.Packages); n > 0 && r.Packages[n-1].ExitStatus == -1 {
			t.Pkg = r.Packages[n-1].Pkg
		}
		if t.Status == "SKIP" {
			t.Reason = r.lastLog[t.Name]
		}
		r.Tests = append(r.Tests, t)
	}
}

func (r *Result) tail() string {
	if len(r.Tail) == 0 {
		return "    (no console output)"
	}
	return "    " + strings.Join(r.Tail, "\n    ")
}
