package agent

import (
	"io/fs"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A module with no file that the kernel has (built in: /sys/module/<name>)
// resolves to errPresent, not to a missing-file error; a file wins over it,
// and a module the kernel lacks is still an error.
func TestResolveBuiltinModule(t *testing.T) {
	fsys := fstest.MapFS{
		"lib/modules/ptvmm/virtio_net.ko":  {Data: []byte("v")},
		"sys/module/virtio_pci/parameters": {Mode: fs.ModeDir | 0o555},
		"sys/module/virtio_net/refcnt":     {Data: []byte("0")},
		"sys/module/notadir":               {Data: []byte("x")},
	}
	const dir = "/lib/modules/ptvmm"
	for _, name := range []string{"virtio_pci", "virtio-pci", "virtio_pci.ko", "/elsewhere/virtio_pci.ko.xz"} {
		_, err := resolveModule(fsys, dir, name)
		require.ErrorIs(t, err, errPresent, name)
	}
	got, err := resolveModule(fsys, dir, "virtio_net")
	require.NoError(t, err)
	assert.Equal(t, dir+"/virtio_net.ko", got)
	for _, name := range []string{"virtio_ring", "notadir", "..", "virtio_pci/../x"} {
		_, err := resolveModule(fsys, dir, name)
		require.Error(t, err, name)
		assert.NotErrorIs(t, err, errPresent, name)
	}
}
