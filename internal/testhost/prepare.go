package testhost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ptvmm/ptvmm/guest/initramfs"
)

// Package paths Prepare builds, relative to the module root.
const (
	vmrunPkg   = "./cmd/vmrun"
	modulePath = "github.com/ptvmm/ptvmm"
)

// TestPackages expands patterns (go list syntax) to the import paths of
// packages that have tests.
func TestPackages(ctx context.Context, root string, patterns []string) ([]string, error) {
	pkgs, err := ListTestPackages(ctx, root, patterns)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(pkgs))
	for i, p := range pkgs {
		out[i] = p.ImportPath
	}
	return out, nil
}

// Package is a package with tests, as go list reports it.
type Package struct {
	ImportPath string
	Dir        string   // source directory
	TestFiles  []string // _test.go file names (internal and external), in Dir
}

// ListTestPackages expands patterns (go list syntax) to the packages that
// have tests, in go list's order.
func ListTestPackages(ctx context.Context, root string, patterns []string) ([]Package, error) {
	args := append([]string{"list", "-json=ImportPath,Dir,TestGoFiles,XTestGoFiles"}, patterns...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			msg = string(ee.Stderr)
		}
		return nil, fmt.Errorf("testhost: go list %s: %w\n%s", strings.Join(patterns, " "), err, msg)
	}
	var pkgs []Package
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath, Dir           string
			TestGoFiles, XTestGoFiles []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("testhost: go list output: %w", err)
		}
		files := append(p.TestGoFiles, p.XTestGoFiles...)
		if len(files) > 0 {
			pkgs = append(pkgs, Package{ImportPath: p.ImportPath, Dir: p.Dir, TestFiles: files})
		}
	}
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("testhost: no tests in %s", strings.Join(patterns, " "))
	}
	return pkgs, nil
}

// Assets are the built pieces of an e2e run, in Dir (see the Asset* names).
type Assets struct {
	Dir    string
	Root   string // module root
	Kernel *Kernel
	Init   string       // static guest agent: PID 1 of the test host and of the inner guest
	VMRun  string       // static cmd/vmrun; "" when the repo has none yet
	Runner string       // static runner of a RunPlan (see Options.Runner); "" when not built
	Tests  []TestBinary // static test binaries built for the test host
	Demo   string       // the demo guest's initramfs (AssetDemoInit); "" until PackDemo
}

// TestBinary is a `go test -c` binary of one package.
type TestBinary struct {
	Pkg  string // import path
	Path string // host path
	Name string // file name, unique per package
	// Testdata is the package's testdata directory on the host, "" when it
	// has none; the test host gets a copy and runs the binary next to it.
	Testdata string
}

// GuestPath is where the binary is inside the test host.
func (b TestBinary) GuestPath() string { return TestHostAssets + "/tests/" + b.Name }

// GuestDir is the binary's working directory inside the test host: the
// parent of its testdata copy, or / without testdata.
func (b TestBinary) GuestDir() string {
	if b.Testdata == "" {
		return "/"
	}
	return TestHostAssets + "/src/" + strings.TrimSuffix(b.Name, ".test")
}

// Options say what Prepare builds.
type Options struct {
	Root   string  // module root
	Dir    string  // output directory (exists, empty)
	Kernel *Kernel // the kernel cache
	// TestPackages are packages (import paths or patterns such as
	// ./vmm/...) whose tests are built as static binaries for the test host;
	// packages without tests are dropped.
	TestPackages []string
	// Runner is the package (relative to Root) of a static command that runs
	// a RunPlan when given PlanFlag (e2e/cmd/testhost); "" builds none, and
	// then only one test binary can run per test host boot.
	Runner string
	Log    io.Writer
}

// Prepare builds the static agent, vmrun and the TestPackages' test
// binaries into Dir, and the inner guest's initramfs. Log gets one line per step.
func Prepare(ctx context.Context, o Options) (*Assets, error) {
	root, dir, k, log := o.Root, o.Dir, o.Kernel, o.Log
	if log == nil {
		log = io.Discard
	}
	a := &Assets{Dir: dir, Root: root, Kernel: k}
	step := func(name string, f func() error) error {
		t := time.Now()
		if err := f(); err != nil {
			return err
		}
		fmt.Fprintf(log, "testhost: %s (%.1fs)\n", name, time.Since(t).Seconds())
		return nil
	}

	a.Init = filepath.Join(dir, "ptvmm-agent")
	if err := step("build agent", func() error { return initramfs.BuildAgent(a.Init) }); err != nil {
		return nil, err
	}
	if exists(filepath.Join(root, vmrunPkg)) {
		a.VMRun = filepath.Join(dir, AssetVMRun)
		if err := step("build vmrun", func() error { return goBuild(ctx, root, a.VMRun, "build", vmrunPkg) }); err != nil {
			return nil, err
		}
	}
	if o.Runner != "" {
		a.Runner = filepath.Join(dir, AssetRunner)
		if err := step("build runner", func() error { return goBuild(ctx, root, a.Runner, "build", o.Runner) }); err != nil {
			return nil, err
		}
	}
	if len(o.TestPackages) > 0 {
		pkgs, err := ListTestPackages(ctx, root, o.TestPackages)
		if err != nil {
			return nil, err
		}
		tests, err := buildTests(ctx, root, dir, pkgs, log)
		if err != nil {
			return nil, err
		}
		a.Tests = tests
	}
	if err := step("pack guest initramfs", a.packGuest); err != nil {
		return nil, err
	}
	// The tests read the kernel through the assets dir, as in the test host.
	if err := os.Symlink(k.Dir, filepath.Join(dir, AssetKernelDir)); err != nil {
		return nil, fmt.Errorf("testhost: %w", err)
	}
	return a, nil
}

// buildTests builds pkgs' test binaries into dir, two links at a time (go
// parallelises the compiles itself), and returns them in pkgs' order.
func buildTests(ctx context.Context, root, dir string, pkgs []Package, log io.Writer) ([]TestBinary, error) {
	t := time.Now()
	tests := make([]TestBinary, len(pkgs))
	errs := make([]error, len(pkgs))
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for i, p := range pkgs {
		b := TestBinary{Pkg: p.ImportPath, Name: strings.ReplaceAll(strings.TrimPrefix(p.ImportPath, modulePath+"/"), "/", "_") + ".test"}
		b.Path = filepath.Join(dir, b.Name)
		if td := filepath.Join(p.Dir, "testdata"); isDir(td) {
			b.Testdata = td
		}
		tests[i] = b
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = goBuild(ctx, root, b.Path, "test", "-c", p.ImportPath)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "testhost: build %d test binaries (%.1fs)\n", len(tests), time.Since(t).Seconds())
	return tests, nil
}

// GuestModules are the module groups the inner guest's initramfs carries in
// the agent's module directory. They are not in its load list: a test loads
// what it needs with ptvmm.modules= (see GuestModuleArg).
var GuestModules = []string{"virtio-net", "uio"}

// TestdevKmod is our own guest module (guest/kmod): the MSI-X driver for the
// PCI test device. `make kernel` builds it into the kernel cache when the
// kernel's headers package is installed; the inner guest's initramfs carries
// it under the agent's module directory when it was built.
const TestdevKmod = "ptvmm_testdev"

// KmodMissingFile, in the kernel cache, holds scripts/kmod.sh's one-line
// reason for not building guest/kmod (another release's headers that did
// not build, headers it may not install).
const KmodMissingFile = "KMOD_MISSING"

// KmodMissing says in one line why module name (see TestdevKmod) is not in
// the kernel cache, or returns "" when it is there.
func KmodMissing(k *Kernel, name string) string {
	if _, err := os.Stat(k.ModulePath(name)); err == nil {
		return ""
	}
	if b, err := os.ReadFile(filepath.Join(k.Dir, KmodMissingFile)); err == nil {
		if why := strings.TrimSpace(string(b)); why != "" {
			return fmt.Sprintf("%s.ko not built for %s: %s", name, k.Version, why)
		}
	}
	return fmt.Sprintf("%s.ko not built: install linux-headers-%s, then run `make kernel`", name, k.Version)
}

// GuestModuleArg is the ptvmm.modules= value that loads groups in the inner
// guest, e.g. GuestModuleArg(k, "virtio-net").
func GuestModuleArg(k *Kernel, groups ...string) (string, error) {
	mods, err := k.Modules(groups...)
	if err != nil {
		return "", err
	}
	return "ptvmm.modules=" + strings.Join(mods, ","), nil
}

// PtnetKmod is our guest driver for the ptnet and memdev devices
// (guest/kmod): it gives a process /dev/ptnetN. Like TestdevKmod, it is in
// the kernel cache when `make kernel` could build it.
const PtnetKmod = "ptvmm_ptnet"

// AssetDemoInit is the demo guest's initramfs in the assets (see PackDemo).
const AssetDemoInit = "demo.cpio"

// PackDemo writes the demo guest's initramfs, AssetDemoInit: the agent as
// /init, loading the virtio-net modules and, with ptnet, PtnetKmod at boot,
// and running cmds (agent built-ins, one a line) in order until one fails.
// Boot it with GuestAppend, which names no command. WriteTestHostInitramfs
// carries it from then on.
func (a *Assets) PackDemo(cmds []string, ptnet bool) error {
	mods, err := a.Kernel.Modules("virtio-net")
	if err != nil {
		return err
	}
	if ptnet {
		if why := KmodMissing(a.Kernel, PtnetKmod); why != "" {
			return fmt.Errorf("testhost: demo: %s", why)
		}
		mods = append(mods, PtnetKmod)
	}
	spec := initramfs.Spec{Init: a.Init, Cmd: strings.Join(cmds, "\n") + "\n"}
	for _, m := range mods {
		spec.Modules = append(spec.Modules, a.Kernel.ModulePath(m))
	}
	p := filepath.Join(a.Dir, AssetDemoInit)
	if err := initramfs.BuildFile(p, spec); err != nil {
		return err
	}
	a.Demo = p
	return nil
}

// packGuest writes the inner guest's initramfs: the agent as /init, the
// GuestModules files and TestdevKmod if it was built.
func (a *Assets) packGuest() error {
	mods, err := a.Kernel.Modules(GuestModules...)
	if err != nil {
		return err
	}
	if KmodMissing(a.Kernel, TestdevKmod) == "" {
		mods = append(mods, TestdevKmod)
	}
	spec := initramfs.Spec{Init: a.Init}
	for _, m := range mods {
		spec.Files = append(spec.Files, initramfs.File{
			Host: a.Kernel.ModulePath(m), Guest: "/lib/modules/ptvmm/" + m + ".ko", Mode: 0o644,
		})
	}
	return initramfs.BuildFile(filepath.Join(a.Dir, AssetGuestInit), spec)
}

// TestHostGroups are the module groups the test host's agent loads, in
// order: KVM, and TUN for tests that use tap devices.
var TestHostGroups = []string{"kvm", "tun"}

// TestHostModules are loaded by the test host's agent, in this order.
func (a *Assets) TestHostModules() ([]string, error) { return a.Kernel.Modules(TestHostGroups...) }

// HostSpec is what one test host boot runs (see WriteTestHostInitramfs).
type HostSpec struct {
	// Cmd is the agent's command. Empty with Plan: the runner runs the plan.
	Cmd string
	Env []string // KEY=VALUE for the command
	// Tests are packed under TestHostAssets/tests (with their testdata).
	Tests []TestBinary
	// Plan, when not empty, is packed as PlanPath for the runner.
	Plan []RunStep
}

// PlanSteps is the plan that runs tests, each with args and then its
// extra[b.Pkg] arguments, in the test host.
func PlanSteps(tests []TestBinary, args []string, extra map[string][]string) []RunStep {
	steps := make([]RunStep, len(tests))
	for i, b := range tests {
		a := append(append([]string(nil), args...), extra[b.Pkg]...)
		steps[i] = RunStep{Pkg: b.Pkg, Path: b.GuestPath(), Args: a, Dir: b.GuestDir()}
	}
	return steps
}

// WriteTestHostInitramfs packs the test host: the agent as /init, the
// TestHostGroups modules in its load list, h.Cmd (or the runner with
// h.Plan) as the agent's command with h.Env, and the assets (the kernel
// cache, the guest initramfs, vmrun, the runner, the tests binaries, the
// files the PassFileEnvs set here name) under TestHostAssets.
func (a *Assets) WriteTestHostInitramfs(path string, h HostSpec) error {
	mods, err := a.TestHostModules()
	if err != nil {
		return err
	}
	spec := initramfs.Spec{Init: a.Init, Cmd: h.Cmd, Env: h.Env}
	for _, m := range mods {
		spec.Modules = append(spec.Modules, a.Kernel.ModulePath(m))
	}
	at := func(name string) string { return filepath.Join(TestHostAssets, name) }
	add := func(host, guest string, mode os.FileMode) {
		spec.Files = append(spec.Files, initramfs.File{Host: host, Guest: guest, Mode: mode})
	}
	kfiles, err := filepath.Glob(filepath.Join(a.Kernel.Dir, "*"))
	if err != nil {
		return fmt.Errorf("testhost: %w", err)
	}
	for _, f := range kfiles {
		if st, err := os.Stat(f); err == nil && st.Mode().IsRegular() {
			add(f, at(AssetKernelDir+"/"+filepath.Base(f)), 0o644)
		}
	}
	kmods, err := filepath.Glob(filepath.Join(a.Kernel.Dir, "modules", "*.ko"))
	if err != nil {
		return fmt.Errorf("testhost: %w", err)
	}
	for _, f := range kmods {
		add(f, at(AssetKernelDir+"/modules/"+filepath.Base(f)), 0o644)
	}
	add(filepath.Join(a.Dir, AssetGuestInit), at(AssetGuestInit), 0o644)
	if a.Demo != "" {
		add(a.Demo, at(AssetDemoInit), 0o644)
	}
	if a.VMRun != "" {
		add(a.VMRun, at(AssetVMRun), 0o755)
	}
	for _, b := range h.Tests {
		add(b.Path, b.GuestPath(), 0o755)
		if b.Testdata != "" {
			if err := addTree(&spec, b.Testdata, b.GuestDir()+"/testdata"); err != nil {
				return err
			}
		}
	}
	extra, extraEnv, err := passFiles(os.Getenv)
	if err != nil {
		return err
	}
	spec.Files = append(spec.Files, extra...)
	spec.Env = append(append([]string(nil), h.Env...), extraEnv...)
	if len(h.Plan) > 0 {
		if a.Runner == "" {
			return errors.New("testhost: a plan needs the runner (Options.Runner)")
		}
		add(a.Runner, at(AssetRunner), 0o755)
		plan, err := json.Marshal(h.Plan)
		if err != nil {
			return fmt.Errorf("testhost: plan: %w", err)
		}
		spec.Files = append(spec.Files, initramfs.File{Guest: PlanPath, Data: plan, Mode: 0o644})
		if spec.Cmd == "" {
			spec.Cmd = at(AssetRunner) + " " + PlanFlag + " " + PlanPath
		}
	}
	return initramfs.BuildFile(path, spec)
}

// addTree adds the regular files under host to spec at guest.
func addTree(spec *initramfs.Spec, host, guest string) error {
	return filepath.WalkDir(host, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("testhost: %w", err)
		}
		rel, err := filepath.Rel(host, p)
		if err != nil {
			return fmt.Errorf("testhost: %w", err)
		}
		g := path.Join(guest, filepath.ToSlash(rel))
		switch {
		case d.IsDir():
			spec.Dirs = append(spec.Dirs, g)
		case d.Type().IsRegular():
			spec.Files = append(spec.Files, initramfs.File{Host: p, Guest: g})
		}
		return nil
	})
}

// goBuild runs `go <args...> -o out` statically linked.
func goBuild(ctx context.Context, root, out string, args ...string) error {
	full := append([]string{args[0], "-o", out, "-trimpath"}, args[1:]...)
	cmd := exec.CommandContext(ctx, "go", full...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("testhost: go %s: %w\n%s", strings.Join(full, " "), err, b)
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// Cmdline is the test host's kernel command line. The agent's command is in
// the initramfs (WriteTestHostInitramfs), so nothing here needs quoting.
// no_timer_check: on a loaded host TCG can miss the kernel's IO-APIC timer
// probe, which then panics with "IO-APIC + timer doesn't work!".
func Cmdline() string {
	// oops=panic: a test host kernel that oopses is not trusted to finish;
	// with panic=-1 and qemu's -no-reboot it ends at once and the runner retries.
	return "console=ttyS0 quiet panic=-1 oops=panic reboot=k no_timer_check " + CmdlineMarker
}

// GuestLogEnv, when set in the environment of the e2e tests, keeps the
// inner guest's kernel log (no "quiet"); the runner's -guestlog sets it.
// Every console byte is a VM exit, so the log costs seconds under TCG.
const GuestLogEnv = "PTVMM_E2E_GUEST_LOG"

// GuestCmdline is the inner guest's kernel command line: the agent runs cmd;
// extra are more words (e.g. from GuestModuleArg).
func GuestCmdline(cmd string, extra ...string) string {
	return GuestAppend(extra...) + fmt.Sprintf(` ptvmm.cmd="%s"`, cmd)
}

// GuestAppend is GuestCmdline without a command, for an initramfs that
// carries its commands (/etc/ptvmm/cmd, see PackDemo).
func GuestAppend(extra ...string) string {
	// As vmrun's default -append: one UART probed, no timer check (slow under TCG).
	app := []string{"console=ttyS0", "reboot=k", "panic=-1", "8250.nr_uarts=1", "no_timer_check"}
	if os.Getenv(GuestLogEnv) == "" {
		app = append(app, "quiet")
	}
	app = append(app, extra...)
	return strings.Join(app, " ")
}

// VMRunArgs is the vmrun command line that boots the inner guest from the
// assets in dir with the agent running cmd (see GuestCmdline).
func VMRunArgs(vmrun, dir, cmd string, extra ...string) []string {
	return []string{vmrun,
		"-kernel", filepath.Join(dir, AssetKernelDir, "vmlinuz"),
		"-initrd", filepath.Join(dir, AssetGuestInit),
		"-append", GuestCmdline(cmd, extra...)}
}
