// Package kcache finds and reads the guest kernel cache that `make kernel` fills:
// vmlinuz, VERSION, modules/*.ko (Debian's modules the tests load, and our own from
// guest/kmod) and one NAME.order file per module group (kvm, virtio-net, uio, ...)
// listing that group's modules in load order.
//
// Dir looks, in order, at $PTVMM_KERNEL_DIR; at the directory compiled into the
// binary (`make build` sets BuiltDir to the repository's .cache/kernel with
// -ldflags -X); and next to the executable: DIR/kernel (the test host's layout,
// /testhost/vmrun beside /testhost/kernel) and DIR/../.cache/kernel (bin/vmrun in a
// checkout). It never looks at the working directory, so a vmrun started inside
// another Go module does not pick up that module's files.
//
// Concurrency: the functions and Kernel's methods only read files; safe from any
// goroutine.
package kcache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// EnvDir names the kernel cache directory, overriding every other place.
const EnvDir = "PTVMM_KERNEL_DIR"

// BuiltDir is the kernel cache compiled in by `make build`
// (-ldflags "-X github.com/ptvmm/ptvmm/internal/kcache.BuiltDir=...").
var BuiltDir string

// ErrNotFound is returned (wrapped) by Dir when no place holds a kernel cache.
var ErrNotFound = errors.New("no kernel cache")

// Dir returns the kernel cache directory (see the package doc for the order).
func Dir() (string, error) {
	if d := os.Getenv(EnvDir); d != "" {
		return d, nil
	}
	var tried []string
	try := func(d string) bool {
		tried = append(tried, d)
		_, err := os.Stat(filepath.Join(d, "VERSION"))
		return err == nil
	}
	if BuiltDir != "" && try(BuiltDir) {
		return BuiltDir, nil
	}
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			dir := filepath.Dir(exe)
			for _, d := range []string{filepath.Join(dir, "kernel"), filepath.Join(dir, "..", ".cache", "kernel")} {
				if try(d) {
					return filepath.Clean(d), nil
				}
			}
		}
	}
	return "", fmt.Errorf("%w (looked in %s): run `make kernel` in the ptvmm checkout, or set %s", ErrNotFound, strings.Join(tried, ", "), EnvDir)
}

// Kernel is a kernel cache directory.
type Kernel struct {
	Dir     string
	Version string
}

// Load checks that dir holds a kernel and reads its version.
func Load(dir string) (*Kernel, error) {
	v, err := os.ReadFile(filepath.Join(dir, "VERSION"))
	if err != nil {
		return nil, fmt.Errorf("kcache: no kernel in %s (run `make kernel`): %w", dir, err)
	}
	k := &Kernel{Dir: dir, Version: strings.TrimSpace(string(v))}
	if _, err := os.Stat(k.Vmlinuz()); err != nil {
		return nil, fmt.Errorf("kcache: kernel cache %s incomplete (run `make kernel`): %w", dir, err)
	}
	return k, nil
}

// Vmlinuz is the path of the bzImage.
func (k *Kernel) Vmlinuz() string { return filepath.Join(k.Dir, "vmlinuz") }

// ModulePath is the path of module file name (without .ko).
func (k *Kernel) ModulePath(name string) string {
	return filepath.Join(k.Dir, "modules", name+".ko")
}

// Modules lists the module file names of groups (kvm, virtio-net, uio) in
// load order, each once.
func (k *Kernel) Modules(groups ...string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, g := range groups {
		b, err := os.ReadFile(filepath.Join(k.Dir, g+".order"))
		if err != nil {
			return nil, fmt.Errorf("kcache: module group %s (run `make kernel`): %w", g, err)
		}
		for _, m := range strings.Fields(string(b)) {
			if seen[m] {
				continue
			}
			if _, err := os.Stat(k.ModulePath(m)); err != nil {
				return nil, fmt.Errorf("kcache: module %s (run `make kernel`): %w", m, err)
			}
			seen[m] = true
			out = append(out, m)
		}
	}
	return out, nil
}
