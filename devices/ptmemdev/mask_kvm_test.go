package ptmemdev

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// Where the mask test's guest leaves its observations (qwords after kvmResult).
const (
	maskGo    = boot.MicroDataAddr + 0x100 // the host sets it: "vector 0 was raised"
	maskPBA1  = boot.MicroDataAddr + 0x108 // PBA after the masked raise
	maskCount = boot.MicroDataAddr + 0x110 // interrupts taken by then
	maskPBA2  = boot.MicroDataAddr + 0x118 // PBA once vector 0 was delivered
	maskPBA3  = boot.MicroDataAddr + 0x120 // PBA at the end
)

// TestKVMMaskedVector: on KVM, with the device's real irqfds and the guest driving the
// MSI-X table. The host raises vector 1 before the guest has programmed it (no route
// yet), and vector 0 while the guest has it masked; neither interrupts the guest,
// both show in the PBA. Unmasking vector 0 delivers exactly one interrupt; programming
// and unmasking vector 1 delivers exactly one more; masking and unmasking with nothing
// raised delivers none. Each mask store is a KVM_IRQFD deassign, which waits for
// KVM's injections in flight, so the guest's count after it is final.
func TestKVMMaskedVector(t *testing.T) {
	port, err := netmap.NewPort(netmap.PortConfig{Name: "vale0:kvmmask", TxRings: 1, RxRings: 1, TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	t.Cleanup(func() { port.Close() })
	r := newKVMRig(t, port, true)
	msix := r.d.Function.MSIX()
	e0, e1 := r.bar.msix, r.bar.msix+pci.MSIXEntrySize
	pba := r.bar.msix + MSIXPBAOffset
	// keep stores the 32-bit value at src into the qword at dst (clobbers RAX, RBX).
	keep := func(a *micro.Asm, dst, src uint64) {
		a.MovImm(micro.RBX, src)
		a.Load32(micro.RAX, micro.RBX, 0)
		a.MovImm(micro.RBX, dst)
		a.Store64(micro.RBX, 0, micro.RAX)
	}

	a, h := program()
	a.EnableLAPIC()
	a.StoreImm32(e0, micro.LAPICBase)
	a.StoreImm32(e0+4, 0)
	a.StoreImm32(e0+8, kvmVector)
	a.StoreImm32(e0+12, 1) // masked
	a.ConfigWrite16(r.d.Function.Slot(), pci.CapOffset+2, pci.MSIXCtrlEnable)
	a.ToUser(boot.MicroUserCS, boot.MicroUserDS, true)
	a.Report(micro.ReadyAddr)
	a.SpinUntil(maskGo, 1)
	keep(a, maskPBA1, pba) // an exit: an irqfd still bound would have fired by now
	keep(a, maskCount, kvmCounter)
	a.StoreImm32(e0+12, 0) // unmask vector 0
	a.SpinUntil(kvmCounter, 1)
	a.StoreImm32(e0+12, 1)
	keep(a, maskPBA2, pba)
	a.StoreImm32(e1, micro.LAPICBase) // vector 1, first programmed now
	a.StoreImm32(e1+4, 0)
	a.StoreImm32(e1+8, kvmVector+1)
	a.StoreImm32(e1+12, 0)
	a.SpinUntil(kvmCounter, 2)
	a.StoreImm32(e1+12, 1)
	a.StoreImm32(e0+12, 0) // unmask and mask again: nothing is held
	a.StoreImm32(e0+12, 1)
	keep(a, maskPBA3, pba)
	a.MovImm(micro.RBX, kvmCounter)
	a.Load64(micro.RAX, micro.RBX, 0)
	a.Report(micro.DoneAddr)
	a.Halt()
	r.load(t, a, h)

	require.NoError(t, r.d.vectors.Vector(1).Event().Signal(), "raised before the guest programs vector 1")
	res := r.g.Start(2 * time.Minute)
	r.ready(t, res)
	assert.False(t, msix.Pending(0))
	assert.True(t, msix.Pending(1), "held since before the guest programmed it")
	require.NoError(t, r.d.vectors.Vector(0).Event().Signal(), "raised while masked")
	assert.True(t, msix.Pending(0))
	require.NoError(t, r.g.Mem.Write64(maskGo, 1))

	out := <-res
	require.NoError(t, out.Err)
	assert.Equal(t, uint64(0b11), r.g.Uint64(maskPBA1), "both vectors pending while masked")
	assert.Zero(t, r.g.Uint64(maskCount), "no interrupt while masked")
	assert.Equal(t, uint64(0b10), r.g.Uint64(maskPBA2), "vector 0 delivered, vector 1 still held")
	assert.Zero(t, r.g.Uint64(maskPBA3))
	assert.Equal(t, uint32(2), out.Value, "exactly one interrupt per unmask of a held vector")
	assert.Equal(t, uint64(2), r.g.Uint64(kvmCounter))
	for i := range 2 {
		assert.False(t, r.d.vectors.Vector(i).Attached(), "vector %d masked at the end: irqfd unbound", i)
	}
}
