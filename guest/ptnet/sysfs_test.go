//go:build linux

package ptnet

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type fakeBAR struct{ base, size, flags uint64 }

// fakePCI writes a device directory as Linux sysfs shows it.
func fakePCI(t *testing.T, sysfs, addr string, vendor, device, class uint32, bars []fakeBAR, driver, misc string) {
	dir := filepath.Join(sysfs, "bus/pci/devices", addr)
	require.NoError(t, os.MkdirAll(dir, 0o755))
	w := func(name, v string) { require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644)) }
	w("vendor", fmt.Sprintf("0x%04x\n", vendor))
	w("device", fmt.Sprintf("0x%04x\n", device))
	w("class", fmt.Sprintf("0x%06x\n", class))
	w("irq", "0\n")
	var res strings.Builder
	for i := range 17 {
		var b fakeBAR
		if i < len(bars) {
			b = bars[i]
		}
		end := uint64(0)
		if b.size > 0 {
			end = b.base + b.size - 1
		}
		fmt.Fprintf(&res, "0x%016x 0x%016x 0x%016x\n", b.base, end, b.flags)
	}
	w("resource", res.String())
	if driver != "" {
		drv := filepath.Join(sysfs, "bus/pci/drivers", driver)
		require.NoError(t, os.MkdirAll(drv, 0o755))
		require.NoError(t, os.Symlink(drv, filepath.Join(dir, "driver")))
	}
	if misc != "" {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "misc", misc), 0o755))
	}
}

func TestFind(t *testing.T) {
	sysfs := t.TempDir()
	// A pcie-root-port with the memdev's IDs (upstream QEMU reused them): not ours.
	fakePCI(t, sysfs, "0000:00:01.0", Vendor, MemdevDevice, 0x060400, nil, "pcieport", "")
	fakePCI(t, sysfs, "0000:00:02.0", 0x8086, 0x100e, 0x020000, nil, "", "")
	fakePCI(t, sysfs, "0000:00:03.0", Vendor, PtnetDevice, 0x020000,
		[]fakeBAR{{0xfe000000, 4096, 0x40200}, {}, {0xfe001000, 4096, 0x40200}}, "ptvmm_ptnet", "ptnet0")
	fakePCI(t, sysfs, "0000:00:04.0", Vendor, MemdevDevice, 0xff0000,
		[]fakeBAR{{0xc000, 128, 0x40101}, {0xe0000000, 1 << 24, 0x4220c}}, "ptvmm_ptnet", "")

	devs, err := Find(sysfs)
	require.NoError(t, err)
	require.Len(t, devs, 2)
	assert.Equal(t, PCIDevice{Addr: "0000:00:03.0", Kind: KindPtnet, Driver: "ptvmm_ptnet", Node: "ptnet0",
		BAR: [3]BAR{{0xfe000000, 4096, true}, {}, {0xfe001000, 4096, true}}}, devs[0])
	assert.Equal(t, KindMemdev, devs[1].Kind)
	assert.Equal(t, BAR{0xc000, 128, false}, devs[1].BAR[0])
	assert.Equal(t, BAR{0xe0000000, 1 << 24, true}, devs[1].BAR[1])

	m, ok := memdevAt(devs, 0xe0000000)
	assert.True(t, ok)
	assert.Equal(t, "0000:00:04.0", m.Addr)
	_, ok = memdevAt(devs, 0xfe000000)
	assert.False(t, ok, "a ptnet BAR is not a memdev")

	dev, err := DefaultDevice(sysfs)
	require.NoError(t, err)
	assert.Equal(t, "/dev/ptnet0", dev)
}

func TestDefaultDeviceErrors(t *testing.T) {
	sysfs := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(sysfs, "bus/pci/devices"), 0o755))
	_, err := DefaultDevice(sysfs)
	assert.ErrorContains(t, err, "no ptnet device")

	fakePCI(t, sysfs, "0000:00:03.0", Vendor, PtnetDevice, 0x020000, nil, "", "")
	_, err = DefaultDevice(sysfs)
	assert.ErrorContains(t, err, "load ptvmm_ptnet.ko")
}

func TestOpenWithoutDevice(t *testing.T) {
	_, err := Open(Options{Dev: filepath.Join(t.TempDir(), "ptnet0")})
	assert.ErrorContains(t, err, "ptnet: open")
}

func TestOpenNotPtnet(t *testing.T) {
	// A file that is not the module's device: the INFO ioctl is refused.
	p := filepath.Join(t.TempDir(), "ptnet0")
	require.NoError(t, os.WriteFile(p, nil, 0o600))
	_, err := Open(Options{Dev: p})
	assert.ErrorContains(t, err, "INFO")
}

func TestReadRegChecksOffset(t *testing.T) {
	d := &Device{fd: -1}
	for _, off := range []uint32{2, 68, 128, 1 << 31} {
		_, err := d.ReadReg(off)
		assert.Error(t, err, off)
	}
}
