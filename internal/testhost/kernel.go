package testhost

import "github.com/ptvmm/ptvmm/internal/kcache"

// Kernel is a kernel cache directory as `make kernel` fills it (see kcache).
type Kernel = kcache.Kernel

// LoadKernel checks that dir holds a kernel and reads its version.
func LoadKernel(dir string) (*Kernel, error) { return kcache.Load(dir) }
