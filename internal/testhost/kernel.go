package testhost

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Kernel is a kernel cache directory as `make kernel` fills it.
type Kernel struct {
	Dir     string
	Version string
}

// LoadKernel checks that dir holds a kernel and reads its version.
func LoadKernel(dir string) (*Kernel, error) {
	v, err := os.ReadFile(filepath.Join(dir, "VERSION"))
	if err != nil {
		return nil, fmt.Errorf("testhost: no kernel in %s (run `make kernel`): %w", dir, err)
	}
	k := &Kernel{Dir: dir, Version: strings.TrimSpace(string(v))}
	if _, err := os.Stat(k.Vmlinuz()); err != nil {
		return nil, fmt.Errorf("testhost: kernel cache %s incomplete (run `make kernel`): %w", dir, err)
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
			return nil, fmt.Errorf("testhost: module group %s (run `make kernel`): %w", g, err)
		}
		for _, m := range strings.Fields(string(b)) {
			if seen[m] {
				continue
			}
			if _, err := os.Stat(k.ModulePath(m)); err != nil {
				return nil, fmt.Errorf("testhost: module %s (run `make kernel`): %w", m, err)
			}
			seen[m] = true
			out = append(out, m)
		}
	}
	return out, nil
}
