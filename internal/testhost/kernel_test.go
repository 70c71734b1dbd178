package testhost

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// KmodMissing quotes scripts/kmod.sh's reason when it left one, and says
// nothing once the module is there.
func TestKmodMissing(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "modules"), 0o755))
	write := func(name, s string) { require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644)) }
	write("VERSION", "6.12.1+deb13-cloud-amd64\n")
	write("vmlinuz", "x")
	k, err := LoadKernel(dir)
	require.NoError(t, err)
	assert.Contains(t, KmodMissing(k, TestdevKmod), "install linux-headers-6.12.1+deb13-cloud-amd64")
	write(KmodMissingFile, "the build against .cache/kbuild failed: gcc-14 missing\n")
	assert.Equal(t, "ptvmm_testdev.ko not built for 6.12.1+deb13-cloud-amd64: the build against .cache/kbuild failed: gcc-14 missing", KmodMissing(k, TestdevKmod))
	write("modules/"+TestdevKmod+".ko", "m")
	assert.Empty(t, KmodMissing(k, TestdevKmod))
}

// A group whose modules are all built into the kernel (Debian 13's cloud
// kernel has the virtio core built in) is an empty .order file: no modules,
// no error.
func TestKernelModulesBuiltinGroup(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "modules"), 0o755))
	write := func(name, s string) { require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644)) }
	write("VERSION", "6.12.1+deb13-cloud-amd64\n")
	write("vmlinuz", "x")
	write("core.order", "")
	write("net.order", "failover\nvirtio_net\n")
	write("modules/failover.ko", "m")
	write("modules/virtio_net.ko", "m")
	k, err := LoadKernel(dir)
	require.NoError(t, err)
	mods, err := k.Modules("core")
	require.NoError(t, err)
	assert.Empty(t, mods)
	mods, err = k.Modules("core", "net")
	require.NoError(t, err)
	assert.Equal(t, []string{"failover", "virtio_net"}, mods)
	arg, err := GuestModuleArg(k, "core", "net")
	require.NoError(t, err)
	assert.Equal(t, "ptvmm.modules=failover,virtio_net", arg)
}
