package ptmemdev

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/internal/kvmtest"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/kvm"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// The KVM tests plug both devices into a micro guest on the host's /dev/kvm (they skip
// without one): the guest touches BAR1, the KICK registers and the MSI-X table the way
// a driver does, and the host checks each reached its target without an exit to Go.

// machine adapts a micro guest to Machine.
type machine struct {
	g    *kvmtest.Guest
	root *pci.Root
}

func (m machine) KVM() *kvm.VM                { return m.g.VM }
func (m machine) GSIRouting() *kvm.GSIRouting { return m.g.Routing }
func (m machine) PCI() *pci.Root              { return m.root }
func (m machine) Memory() *memory.Memory      { return m.g.Mem }

// slotMapper installs host-backed BARs as KVM memslots, as vmm does.
type slotMapper struct{ vm *kvm.VM }

func (s slotMapper) MapMemory(gpa uint64, host []byte) (int, error) {
	n, err := s.vm.AddMemory(gpa, host, 0)
	return int(n), err
}
func (s slotMapper) UnmapMemory(h int) error { return s.vm.DeleteMemory(uint32(h)) }

// Guest-physical layout of the KVM rig (RAM is kvmtest.DefaultRAM at 0).
const (
	kvmCounter = boot.MicroDataAddr     // interrupts taken (the handler counts)
	kvmResult  = boot.MicroDataAddr + 8 // PTCTL as the guest read it
	kvmGH      = boot.MicroDataAddr + 0x10000
	kvmHG      = boot.MicroDataAddr + 0x11000
	kvmVector  = 0x46
)

// kvmRig is a micro guest with a memdev and a ptnet plugged in.
type kvmRig struct {
	g   *kvmtest.Guest
	md  *PluggedMemdev
	d   *PluggedPtnet
	h   uint64 // the interrupt handler's address
	bar struct{ regs, msix, mem uint64 }
}

// program starts every guest program the same way (jump over a counting handler), so
// the handler's address is known before the real program is assembled.
func program() (*micro.Asm, micro.Label) {
	a := micro.New(boot.MicroCodeAddr)
	main := a.NewLabel()
	a.Jmp(main)
	h := a.CountingHandler(kvmCounter)
	a.Bind(main)
	return a, h
}

// newKVMRig plugs the devices for port into a new guest that starts at CPL0 when
// kernel (port I/O, MSI-X set-up), else at CPL3.
func newKVMRig(t testing.TB, port *netmap.Port, kernel bool) *kvmRig {
	t.Helper()
	kvmtest.Available(t)
	a, h := program()
	a.Halt()
	code, err := a.Assemble()
	require.NoError(t, err)
	r := &kvmRig{h: a.Addr(h)}
	// Vector kvmVector+i for ring i: one vector shared by all rings would coalesce in
	// the LAPIC's IRR when several fire together.
	idt := map[uint8]uint64{}
	for i := range MaxRings {
		idt[uint8(kvmVector+i)] = r.h
	}
	r.g = kvmtest.New(t, kvmtest.Config{Code: code, IRQChip: true,
		Micro: boot.MicroOptions{Kernel: kernel, IDT: idt}})
	root, err := pci.NewRoot(pci.Config{PIO: r.g.PIO, MMIO: r.g.MMIO, Mapper: slotMapper{r.g.VM},
		Reserved: []memory.Range{{GPA: 0, Size: kvmtest.DefaultRAM}}})
	require.NoError(t, err)
	m := machine{r.g, root}
	r.md, err = PlugMemdev(m, 0, port.Region())
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, r.md.Close()) })
	r.d, err = PlugPtnet(m, 0, Config{Name: "kvm-ptnet", Port: port, MAC: testMAC, Logf: t.Logf})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, r.d.Close()) })
	var ok bool
	r.bar.mem, ok = r.md.Function.BARAddr(MemBAR)
	require.True(t, ok)
	r.bar.regs, ok = r.d.Function.BARAddr(RegsBAR)
	require.True(t, ok)
	r.bar.msix, ok = r.d.Function.BARAddr(MSIXBAR)
	require.True(t, ok)
	require.Less(t, r.bar.mem+port.Region().MapSize(), uint64(boot.MicroIdentityGiB)<<30, "BAR1 inside the guest's identity map")
	return r
}

// load replaces the placeholder with the real program; it must start with program().
func (r *kvmRig) load(t testing.TB, a *micro.Asm, h micro.Label) {
	require.Equal(t, r.h, a.Addr(h), "handler moved")
	code, err := a.Assemble()
	require.NoError(t, err)
	require.NoError(t, r.g.Mem.WriteAt(code, boot.MicroCodeAddr))
}

// msixSetup programs vector i to kvmVector+i on APIC 0, unmasked, and enables MSI-X
// (config space: CPL0), then drops to CPL3 with interrupts on.
func (r *kvmRig) msixSetup(a *micro.Asm) {
	a.EnableLAPIC()
	for i := range r.d.NumRings() {
		e := r.bar.msix + uint64(i)*pci.MSIXEntrySize
		a.StoreImm32(e, micro.LAPICBase)
		a.StoreImm32(e+4, 0)
		a.StoreImm32(e+8, uint32(kvmVector+i))
		a.StoreImm32(e+12, 0)
	}
	a.ConfigWrite16(r.d.Function.Slot(), pci.CapOffset+2, pci.MSIXCtrlEnable)
	a.ToUser(boot.MicroUserCS, boot.MicroUserDS, true)
}

func (r *kvmRig) ready(t testing.TB, res <-chan kvmtest.Result) {
	t.Helper()
	select {
	case <-r.g.Ready:
	case out := <-res:
		t.Fatalf("guest ended before it was ready: %+v", out)
	}
}

// TestKVMBAR1KickAndIRQ: a CPL3 guest stores into BAR1 and the host sees the bytes in
// the region (a memslot: no exit); it writes every KICK register and each ring's
// doorbell eventfd counts one (ioeventfd: no exit, nothing trapped); then the host
// writes each ring's irqfd eventfd and the guest takes one MSI-X interrupt per ring.
func TestKVMBAR1KickAndIRQ(t *testing.T) {
	port, err := netmap.NewPort(netmap.PortConfig{Name: "vale0:kvm", TxRings: 2, RxRings: 2, TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	t.Cleanup(func() { port.Close() }) // after the device's cleanup: the loop stops first
	r := newKVMRig(t, port, true)
	n := r.d.NumRings()
	reg := port.Region()
	offs := []uint64{0, reg.PoolsInfo().BufPoolOffset + 2*uint64(reg.BufSize()), reg.Size() - 4, reg.MapSize() - 4}

	a, h := program()
	r.msixSetup(a)
	for k, off := range offs {
		a.StoreImm32(r.bar.mem+off, 0x5eed_0000+uint32(k))
	}
	for i := range n {
		a.StoreImm32(r.bar.regs+RegKickBase+4*uint64(i), uint32(i))
	}
	a.MovImm(micro.RAX, 0)
	a.Report(micro.ReadyAddr)
	a.WaitCounter(kvmCounter, uint64(n))
	r.load(t, a, h)

	res := r.g.Start(2 * time.Minute)
	r.ready(t, res)
	for k, off := range offs {
		assert.Equal(t, 0x5eed_0000+uint32(k), binary.LittleEndian.Uint32(r.md.Host()[off:]), "BAR1 offset %#x", off)
	}
	for k, off := range offs[:3] {
		assert.Equal(t, 0x5eed_0000+uint32(k), binary.LittleEndian.Uint32(reg.Bytes()[off:]), "region offset %#x", off)
	}
	for i := range n {
		r.d.bmu.Lock()
		v, err := r.d.kicks[i].Read()
		r.d.bmu.Unlock()
		require.NoError(t, err)
		assert.Equal(t, uint64(1), v, "ring %d doorbell", i)
	}
	assert.Zero(t, r.d.Stats().TrappedKicks, "no KICK reached the VMM")
	for i := range n {
		require.NoError(t, r.d.vectors.Vector(i).Event().Signal())
	}
	out := <-res
	require.NoError(t, out.Err)
	assert.Equal(t, uint32(n), out.Value, "one interrupt per ring's irqfd")
	// Trapped: 4 MSI-X table stores per vector, the Ready and Done reports. BAR1 stores
	// and kicks added none.
	assert.Equal(t, uint64(4*n+2), r.g.MMIOExits.Load(), "MMIO exits")
	for i := range n {
		addr, data, masked := r.d.Function.MSIX().Message(i)
		assert.Equal(t, uint64(micro.LAPICBase), addr)
		assert.Equal(t, uint32(kvmVector+i), data)
		assert.False(t, masked)
	}
}

// TestKVMGuestCreateAndLoopInterrupt: the guest registers like netmap's driver (CSB
// in its RAM, appl_need_kick on the RX ring, PTCTL CREATE, PTCTL read), then waits; the
// host sends a frame into the port's RX ring through the pipe's other end, and the
// host loop publishes it in the CSB and raises the RX ring's vector through its irqfd.
func TestKVMGuestCreateAndLoopInterrupt(t *testing.T) {
	master, slave, err := netmap.NewPipe("kvmp", "1", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	t.Cleanup(func() { slave.Close(); master.Close() }) // after the device's cleanup
	r := newKVMRig(t, master, true)
	const rx = 1 // CSB ring of the pipe's RX ring

	a, h := program()
	r.msixSetup(a)
	a.StoreImm32(kvmGH+rx*64+netmap.CSBApplNeedKickOff, 1)
	a.StoreImm32(kvmHG+netmap.CSBKernNeedKickOff, 1)
	a.StoreImm32(kvmHG+rx*64+netmap.CSBKernNeedKickOff, 1)
	a.StoreImm32(r.bar.regs+RegCSBGHBAH, 0)
	a.StoreImm32(r.bar.regs+RegCSBGHBAL, kvmGH)
	a.StoreImm32(r.bar.regs+RegCSBHGBAH, 0)
	a.StoreImm32(r.bar.regs+RegCSBHGBAL, kvmHG)
	a.StoreImm32(r.bar.regs+RegPtctl, PtctlCreate)
	a.MovImm(micro.RBX, r.bar.regs+RegPtctl)
	a.Load32(micro.RAX, micro.RBX, 0)
	a.MovImm(micro.RBX, kvmResult)
	a.Store32(micro.RBX, 0, micro.RAX)
	a.Report(micro.ReadyAddr)
	a.WaitCounter(kvmCounter, 1)
	r.load(t, a, h)

	ep, err := netmap.NewEndpoint(slave, false)
	require.NoError(t, err)
	defer ep.Close()
	res := r.g.Start(2 * time.Minute)
	r.ready(t, res)
	ptctl, err := r.g.Mem.Read32(kvmResult)
	require.NoError(t, err)
	require.Zero(t, ptctl, "PTCTL after CREATE")
	require.True(t, r.d.Running())
	sent, err := ep.Send([][]byte{make([]byte, 60)})
	require.NoError(t, err)
	require.Equal(t, 1, sent)
	out := <-res
	require.NoError(t, out.Err)
	assert.Equal(t, uint32(1), out.Value, "the RX interrupt")
	hwtail, err := r.g.Mem.Read32(kvmHG + rx*64 + netmap.CSBHwTailOff)
	require.NoError(t, err)
	assert.Equal(t, uint32(1), hwtail, "the frame is published in the guest's CSB")
	ls := r.d.LoopStats()
	require.Len(t, ls, 2)
	assert.GreaterOrEqual(t, ls[rx].Interrupts, uint64(1))
	t.Logf("loop RX ring %+v; MMIO exits %d", ls[rx], r.g.MMIOExits.Load())
}
