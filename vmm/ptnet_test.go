package vmm

import (
	"context"
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/devices/ptmemdev"
	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

func ptnetPort(t *testing.T, name string, reg *netmap.Region) *netmap.Port {
	t.Helper()
	p, err := netmap.NewPort(netmap.PortConfig{Name: name, TxSlots: 64, RxSlots: 64, Region: reg})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

func cfgWord(f *pci.Function, off int) uint16 {
	var b [2]byte
	f.ReadConfig(off, b[:])
	return binary.LittleEndian.Uint16(b[:])
}

// ptnetReg reads a ptnet register through the VM's MMIO bus, as the guest would.
func ptnetReg(v *VM, pd *PtnetDevice, off uint64) uint32 {
	bar0, _ := pd.Ptnet.Function.BARAddr(ptmemdev.RegsBAR)
	var b [4]byte
	v.MMIO().Read(bar0+off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// TestAddPtnet: two ptnets whose ports share a region get one memdev; a third in
// another region gets its own; HOSTMEMID pairs each with its memdev; the memdev goes
// when its last ptnet closes; Release runs once, after the device is gone.
func TestAddPtnet(t *testing.T) {
	v := newMicro(t, spin, newNotifyWriter(), 1)
	reg, err := netmap.NewRegion(netmap.RegionConfig{IfSize: 1024, IfNum: 4, RingSize: 5 * 4096, RingNum: 8, BufSize: 2048, BufNum: 1024})
	require.NoError(t, err)
	defer reg.Close()
	pa, pb := ptnetPort(t, "vale0:a", reg), ptnetPort(t, "vale0:b", reg)
	pc := ptnetPort(t, "vale0:c", nil)

	released := 0
	a, err := v.AddPtnet(0, PtnetNIC{Port: pa, MemdevSlot: 7, Release: func() error { released++; return nil }})
	require.NoError(t, err)
	b, err := v.AddPtnet(1, PtnetNIC{Port: pb, Slot: 9})
	require.NoError(t, err)
	c, err := v.AddPtnet(2, PtnetNIC{Port: pc})
	require.NoError(t, err)

	assert.Same(t, a.Memdev, b.Memdev, "one memdev per region")
	assert.NotSame(t, a.Memdev, c.Memdev)
	assert.Equal(t, 7, a.Memdev.Function.Slot())
	assert.Equal(t, 9, b.Ptnet.Function.Slot())
	for _, pd := range []*PtnetDevice{a, b, c} {
		assert.Equal(t, uint16(ptmemdev.PtnetDeviceID), cfgWord(pd.Ptnet.Function, pci.RegDeviceID))
		assert.Equal(t, uint16(ptmemdev.MemdevDeviceID), cfgWord(pd.Memdev.Function, pci.RegDeviceID))
		assert.Equal(t, uint32(pd.Memdev.MemID()), ptnetReg(v, pd, ptmemdev.RegHostMemID))
		assert.Equal(t, pd.Ptnet.NumRings(), pd.Ptnet.Function.MSIX().Vectors())
	}
	assert.Equal(t, uint32(0x0012_3457), ptnetReg(v, b, ptmemdev.RegMacLo), "DefaultMAC(1)")

	// A memdev slot that contradicts the existing one, and a taken slot, are refused.
	pd := ptnetPort(t, "vale0:d", reg)
	_, err = v.AddPtnet(3, PtnetNIC{Port: pd, MemdevSlot: 8})
	assert.ErrorContains(t, err, "already has its memdev in slot 7")
	_, err = v.AddPtnet(3, PtnetNIC{Port: pd, Slot: 9})
	assert.ErrorContains(t, err, "slot 9")

	mdSlot := a.Memdev.Function.Slot()
	require.NoError(t, a.Close())
	assert.Equal(t, 1, released)
	assert.NotNil(t, v.PCI().Function(mdSlot), "b still uses the memdev")
	require.NoError(t, b.Close())
	assert.Nil(t, v.PCI().Function(mdSlot), "the last ptnet of the region took the memdev away")
	require.NoError(t, a.Close())
	assert.Equal(t, 1, released, "Release runs once")
	require.NoError(t, c.Close())
}

// TestPtnetGuestResetStopsLoop: a micro guest registers like netmap's driver (CSB,
// PTCTL CREATE), then resets the machine; Run returns with the loop still running,
// and VM.Close stops it: its goroutines are gone and Release has run.
func TestPtnetGuestResetStopsLoop(t *testing.T) {
	kvmOrSkip(t)
	placeholder := micro.New(boot.MicroCodeAddr)
	placeholder.Halt()
	code, err := placeholder.Assemble()
	require.NoError(t, err)
	v, err := New(Config{Micro: &Micro{Code: code, Options: pioOpts}})
	require.NoError(t, err)
	closed := false
	defer func() {
		if !closed {
			v.Close()
		}
	}()
	port := ptnetPort(t, "vale0:reset", nil)
	released := 0
	pd, err := v.AddPtnet(0, PtnetNIC{Port: port, Release: func() error { released++; return nil }})
	require.NoError(t, err)
	base := runtime.NumGoroutine() // the VM's own, and no loop yet
	bar0, ok := pd.Ptnet.Function.BARAddr(ptmemdev.RegsBAR)
	require.True(t, ok)
	const gh, hg, result = boot.MicroDataAddr, boot.MicroDataAddr + 0x1000, boot.MicroDataAddr + 0x2000
	a := micro.New(boot.MicroCodeAddr)
	a.StoreImm32(bar0+ptmemdev.RegCSBGHBAH, 0)
	a.StoreImm32(bar0+ptmemdev.RegCSBGHBAL, gh)
	a.StoreImm32(bar0+ptmemdev.RegCSBHGBAH, 0)
	a.StoreImm32(bar0+ptmemdev.RegCSBHGBAL, hg)
	a.StoreImm32(bar0+ptmemdev.RegPtctl, ptmemdev.PtctlCreate)
	a.MovImm(micro.RBX, bar0+ptmemdev.RegPtctl)
	a.Load32(micro.RAX, micro.RBX, 0)
	a.MovImm(micro.RBX, result)
	a.Store32(micro.RBX, 0, micro.RAX)
	a.MovImm(micro.RDX, 0x64) // i8042 reset line
	a.MovImm(micro.RAX, 0xfe)
	a.Out8()
	a.Halt()
	code, err = a.Assemble()
	require.NoError(t, err)
	require.NoError(t, v.Memory().WriteAt(code, boot.MicroCodeAddr))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, v.Run(ctx), "a guest reset ends Run cleanly")
	r, err := v.Memory().Read32(result)
	require.NoError(t, err)
	require.Zero(t, r, "PTCTL after CREATE")
	require.True(t, pd.Ptnet.Running(), "the loop ran until the VM went down")
	hwtail, err := v.Memory().Read32(hg + netmap.CSBHwTailOff)
	require.NoError(t, err)
	assert.Equal(t, uint32(63), hwtail, "CREATE wrote the idle TX ring's hwtail")

	closed = true
	require.NoError(t, v.Close())
	assert.False(t, pd.Ptnet.Running())
	assert.Equal(t, 1, released)
	_, ok = ptnetMemdevs.Load(v)
	assert.False(t, ok, "the VM's memdev table is dropped")
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	assert.LessOrEqual(t, runtime.NumGoroutine(), base, "goroutines left behind")
}
