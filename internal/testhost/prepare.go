package testhost

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Package paths Prepare builds, relative to the module root.
const (
	agentPkg    = "./guest/agent"
	fallbackPkg = "./e2e/internal/miniinit" // until guest/agent exists
	vmrunPkg    = "./cmd/vmrun"
	e2ePkg      = "./e2e"
)

// Assets are the built pieces of an e2e run, in Dir (see the Asset* names).
type Assets struct {
	Dir        string
	Root       string // module root
	Kernel     *Kernel
	Init       string // static guest agent: PID 1 of the test host and of the inner guest
	VMRun      string // static cmd/vmrun; "" when the repo has none yet
	TestBinary string // static e2e test binary; "" unless built for the test host
	Timings    map[string]time.Duration
}

// Options say what Prepare builds.
type Options struct {
	Root       string  // module root
	Dir        string  // output directory (exists, empty)
	Kernel     *Kernel // the kernel cache
	TestBinary bool    // build the e2e test binary (for the test host)
	AgentPkg   string  // package of the agent; default ./guest/agent if present
	Log        io.Writer
}

// Prepare builds the static agent, vmrun and (if TestBinary) the e2e test
// binary into Dir, and the inner guest's initramfs. Log gets one line per step.
func Prepare(ctx context.Context, o Options) (*Assets, error) {
	root, dir, k, log := o.Root, o.Dir, o.Kernel, o.Log
	if log == nil {
		log = io.Discard
	}
	a := &Assets{Dir: dir, Root: root, Kernel: k, Timings: map[string]time.Duration{}}
	step := func(name string, f func() error) error {
		t := time.Now()
		err := f()
		a.Timings[name] = time.Since(t)
		if err == nil {
			fmt.Fprintf(log, "testhost: %s (%.1fs)\n", name, a.Timings[name].Seconds())
		}
		return err
	}

	pkg := o.AgentPkg
	if pkg == "" {
		pkg = agentPkg
		if !exists(filepath.Join(root, agentPkg)) {
			pkg = fallbackPkg
		}
	}
	a.Init = filepath.Join(dir, "init")
	if err := step("build agent "+pkg, func() error { return goBuild(ctx, root, a.Init, "build", pkg) }); err != nil {
		return nil, err
	}
	if exists(filepath.Join(root, vmrunPkg)) {
		a.VMRun = filepath.Join(dir, AssetVMRun)
		if err := step("build vmrun", func() error { return goBuild(ctx, root, a.VMRun, "build", vmrunPkg) }); err != nil {
			return nil, err
		}
	}
	if o.TestBinary {
		a.TestBinary = filepath.Join(dir, "e2e.test")
		if err := step("build e2e.test", func() error { return goBuild(ctx, root, a.TestBinary, "test", "-c", e2ePkg) }); err != nil {
			return nil, err
		}
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

// GuestModules are the module groups packed into the inner guest's initramfs.
var GuestModules = []string{"virtio-net", "uio"}

// packGuest writes the inner guest's initramfs: the agent as /init and the
// GuestModules under /lib/modules.
func (a *Assets) packGuest() error {
	files := []File{{Src: a.Init, Dst: "/init"}}
	mods, err := a.Kernel.Modules(GuestModules...)
	if err != nil {
		return err
	}
	for _, m := range mods {
		files = append(files, File{Src: a.Kernel.ModulePath(m), Dst: "/lib/modules/" + m + ".ko", Mode: 0o644})
	}
	return writeFileAtomic(filepath.Join(a.Dir, AssetGuestInit), func(w io.Writer) error {
		return WriteInitramfs(w, files)
	})
}

// TestHostModules are loaded by the test host's agent, in this order.
func (a *Assets) TestHostModules() ([]string, error) { return a.Kernel.Modules("kvm") }

// WriteTestHostInitramfs packs the test host: the agent as /init, the kvm
// modules, and the assets under TestHostAssets.
func (a *Assets) WriteTestHostInitramfs(path string) error {
	mods, err := a.TestHostModules()
	if err != nil {
		return err
	}
	files := []File{{Src: a.Init, Dst: "/init"}}
	for _, m := range mods {
		files = append(files, File{Src: a.Kernel.ModulePath(m), Dst: "/lib/modules/" + m + ".ko", Mode: 0o644})
	}
	at := func(name string) string { return filepath.Join(TestHostAssets, name) }
	files = append(files,
		File{Src: a.Kernel.Vmlinuz(), Dst: at(AssetKernelDir + "/vmlinuz"), Mode: 0o644},
		File{Src: filepath.Join(a.Kernel.Dir, "VERSION"), Dst: at(AssetKernelDir + "/VERSION"), Mode: 0o644},
		File{Src: filepath.Join(a.Dir, AssetGuestInit), Dst: at(AssetGuestInit), Mode: 0o644},
	)
	if a.VMRun != "" {
		files = append(files, File{Src: a.VMRun, Dst: at(AssetVMRun)})
	}
	if a.TestBinary != "" {
		files = append(files, File{Src: a.TestBinary, Dst: at("e2e.test")})
	}
	return writeFileAtomic(path, func(w io.Writer) error { return WriteInitramfs(w, files) })
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

func writeFileAtomic(path string, f func(io.Writer) error) error {
	tmp := path + ".tmp"
	fh, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("testhost: %w", err)
	}
	bw := bufio.NewWriterSize(fh, 1<<20)
	err = f(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		fh.Close()
		os.Remove(tmp)
		return err
	}
	if err := fh.Close(); err != nil {
		return fmt.Errorf("testhost: %w", err)
	}
	return os.Rename(tmp, path)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Cmdline is the test host's kernel command line: load mods, run cmd.
func Cmdline(mods []string, cmd string) string {
	return fmt.Sprintf(`console=ttyS0 quiet panic=-1 %s ptvmm.modules=%s ptvmm.cmd="%s"`,
		CmdlineMarker, strings.Join(mods, ","), cmd)
}

// VMRunArgs is the vmrun command line that boots the inner guest from the
// assets in dir and runs cmd in it.
func VMRunArgs(vmrun, dir, cmd string) []string {
	return []string{vmrun,
		"-kernel", filepath.Join(dir, AssetKernelDir, "vmlinuz"),
		"-initrd", filepath.Join(dir, AssetGuestInit),
		"-append", fmt.Sprintf(`console=ttyS0 ptvmm.cmd="%s"`, cmd)}
}
