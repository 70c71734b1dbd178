package pci_test

import (
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/internal/kvmtest"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

const slot = 3

// nullDev is a trapped register window that reads zero.
type nullDev struct{}

func (nullDev) Read(_ uint64, d []byte) { clear(d) }
func (nullDev) Write(uint64, []byte)    {}

// memfdRegion is a host mapping of a memfd, as a netmap region would be.
func memfdRegion(t testing.TB, size int) []byte {
	fd, err := unix.MemfdCreate("pci-bar", unix.MFD_CLOEXEC)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Ftruncate(fd, int64(size)))
	b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

type rig struct {
	g    *kvmtest.Guest
	root *pci.Root
	fn   *pci.Function
	vecs *notify.MSIXVectors
	host []byte
}

func newRig(t testing.TB, code []byte, opt boot.MicroOptions) *rig {
	g := kvmtest.New(t, kvmtest.Config{Code: code, IRQChip: true, Micro: opt})
	root, err := pci.NewRoot(pci.Config{PIO: g.PIO, MMIO: g.MMIO, Mapper: kvmtest.MemSlots{VM: g.VM},
		Reserved: []memory.Range{{GPA: 0, Size: kvmtest.DefaultRAM}}})
	require.NoError(t, err)
	vecs, err := notify.NewMSIXVectors(g.VM, g.Routing, 4)
	require.NoError(t, err)
	t.Cleanup(func() { vecs.Close() })
	host := memfdRegion(t, 0x10000)
	fn, err := root.Add(slot, pci.Spec{VendorID: 0x1b36, DeviceID: 0x000c, Class: 0x020000,
		BARs: [6]*pci.BAR{
			{Kind: pci.BARIO, Size: 32, Device: nullDev{}},
			{Kind: pci.BARMem32, Size: 0x1000, Device: nullDev{}},
			{Kind: pci.BARMem64, Prefetchable: true, Size: uint64(len(host)), Host: host},
		},
		MSIX: &pci.MSIXSpec{Vectors: 4, BAR: 1, TableOffset: 0x800, PBAOffset: 0xc00, Router: vecs},
	})
	require.NoError(t, err)
	return &rig{g: g, root: root, fn: fn, vecs: vecs, host: host}
}

// TestGuestReadsConfigSpace: the guest walks config space through 0xCF8/0xCFC and
// sees the IDs and the BAR addresses the VMM assigned.
func TestGuestReadsConfigSpace(t *testing.T) {
	const n = 16
	out := uint64(boot.MicroDataAddr)
	code, err := micro.ConfigDump(boot.MicroCodeAddr, slot, n, out)
	require.NoError(t, err)
	r := newRig(t, code, boot.MicroOptions{Kernel: true}) // port I/O needs CPL0 on PVM
	v, err := r.g.Run(time.Minute)
	require.NoError(t, err)
	require.Equal(t, uint32(n), v)
	dump := make([]byte, 4*n)
	require.NoError(t, r.g.Mem.ReadAt(dump, out))
	dw := func(i int) uint32 { return binary.LittleEndian.Uint32(dump[4*i:]) }
	require.Equal(t, uint32(0x000c1b36), dw(0), "vendor/device")
	require.Equal(t, uint32(0x02), dw(2)>>24, "class")
	for i := 0; i < 3; i++ {
		addr, mapped := r.fn.BARAddr(i)
		require.True(t, mapped)
		require.Equal(t, uint32(addr), dw(4+i)&^0xf, "BAR%d as the guest reads it", i)
	}
	a2, _ := r.fn.BARAddr(2)
	require.Equal(t, uint32(a2>>32), dw(7), "BAR2 upper half")
	require.Equal(t, uint32(0x1), dw(4)&0x3, "I/O BAR flag")
	require.Equal(t, uint32(0xc), dw(6)&0xf, "64-bit prefetchable flags")
	t.Logf("guest read BAR0=%#x BAR1=%#x BAR2=%#x:%#x; exits: %d PIO, %d MMIO", dw(4), dw(5), dw(7), dw(6), r.g.PIOExits.Load(), r.g.MMIOExits.Load())
}

// TestGuestMovesHostBAR: the guest re-programs the host-backed BAR and stores to its
// new address; the bytes land in the host mapping (a memslot, no exit, no copy).
func TestGuestMovesHostBAR(t *testing.T) {
	const newAddr = 0xe000_0000
	a := micro.New(boot.MicroCodeAddr)
	a.ConfigWrite32(slot, pci.RegBAR0+8, newAddr)
	a.ConfigWrite32(slot, pci.RegBAR0+12, 0)
	a.StoreImm32(newAddr+0x100, 0xcafef00d)
	a.MovImm(micro.RAX, 1)
	a.Report(micro.DoneAddr)
	a.Halt()
	code, err := a.Assemble()
	require.NoError(t, err)
	r := newRig(t, code, boot.MicroOptions{Kernel: true})
	before := r.g.MMIOExits.Load()
	_, err = r.g.Run(time.Minute)
	require.NoError(t, err)
	addr, mapped := r.fn.BARAddr(2)
	require.True(t, mapped)
	require.Equal(t, uint64(newAddr), addr)
	require.Equal(t, uint32(0xcafef00d), binary.LittleEndian.Uint32(r.host[0x100:]))
	require.Equal(t, before+1, r.g.MMIOExits.Load(), "only the report exits")
}

// TestMSIXVectorToHandler: the guest programs MSI-X table entry 2 (vector 0x45),
// unmasks it and enables MSI-X; the device fires vector 2 and the guest's handler
// for 0x45 counts it. A masked fire stays pending until the guest unmasks.
func TestMSIXVectorToHandler(t *testing.T) {
	const vector, entry = 0x45, 2
	var tableAddr uint64
	build := func(table uint64) ([]byte, map[uint8]uint64) {
		a := micro.New(boot.MicroCodeAddr)
		main := a.NewLabel()
		a.Jmp(main)
		h := a.CountingHandler(boot.MicroDataAddr)
		a.Bind(main)
		a.EnableLAPIC()
		e := table + entry*pci.MSIXEntrySize
		a.StoreImm32(e, micro.LAPICBase)
		a.StoreImm32(e+4, 0)
		a.StoreImm32(e+8, vector)
		a.StoreImm32(e+12, 0) // unmask the entry
		a.ConfigWrite16(slot, pci.CapOffset+2, pci.MSIXCtrlEnable)
		// Wait at CPL3 with interrupts on: PVM delivers through the IDT only there.
		a.ToUser(boot.MicroUserCS, boot.MicroUserDS, true)
		a.Report(micro.ReadyAddr)
		a.WaitCounter(boot.MicroDataAddr, 2)
		code, err := a.Assemble()
		require.NoError(t, err)
		return code, map[uint8]uint64{vector: a.Addr(h)}
	}
	// The BAR address is the allocator's first 32-bit slot; build once to learn it.
	code, idt := build(0)
	r := newRig(t, code, boot.MicroOptions{Kernel: true, IDT: idt})
	bar1, _ := r.fn.BARAddr(1)
	tableAddr = bar1 + 0x800
	code, idt = build(tableAddr)
	r = newRig(t, code, boot.MicroOptions{Kernel: true, IDT: idt})
	m := r.fn.MSIX()
	require.NoError(t, m.Fire(entry), "fired before the guest enabled MSI-X")
	require.True(t, m.Pending(entry))
	res := r.g.Start(time.Minute)
	select {
	case <-r.g.Ready:
	case res := <-res:
		t.Fatalf("guest ended early: %v", res.Err)
	}
	// Enabling delivered the pending vector; fire once more.
	require.False(t, m.Pending(entry))
	require.NoError(t, m.Fire(entry))
	out := <-res
	require.NoError(t, out.Err)
	require.Equal(t, uint32(2), out.Value)
	addr, data, masked := m.Message(entry)
	require.Equal(t, uint64(micro.LAPICBase), addr)
	require.Equal(t, uint32(vector), data)
	require.False(t, masked)
}

// TestIntxLevelUIOStyle drives INTx the way Linux's uio_pci_generic does: the device
// holds its level; the guest's interrupt handler sets INTx disable in the command
// register and EOIs; while masked, resamples must not re-assert the line; when user
// space clears INTx disable with the device still asserting, the line is asserted
// again and the guest takes another interrupt. The guest's CPL3 part cannot do port
// I/O on PVM (nor INT n), so the test performs that user-space config write through
// ports 0xCF8/0xCFC on the guest's PIO bus, the same path a guest OUT takes.
//
// Observed on software KVM (PVM): the resample eventfd fires when the interrupt is
// injected rather than at the guest's EOI, so a level interrupt can be taken twice
// before the handler masks it. Counts are therefore checked as "at least", and the
// masked state is checked deterministically through Function.Resample.
func TestIntxLevelUIOStyle(t *testing.T) {
	const vector = 0x50
	counter := uint64(boot.MicroDataAddr)
	target := counter + 8
	gsi := pci.IntxGSI(slot)
	a := micro.New(boot.MicroCodeAddr)
	main := a.NewLabel()
	a.Jmp(main)
	// INTx handler (CPL0): count, mask with INTx disable, EOI.
	h := a.Here()
	a.Push(micro.RAX)
	a.Push(micro.RDX)
	a.Push(micro.RBX)
	a.MovImm(micro.RBX, counter)
	a.LockInc64(micro.RBX, 0)
	a.ConfigWrite16(slot, pci.RegCommand, pci.CmdIO|pci.CmdMemory|pci.CmdIntxDisable)
	a.StoreImm32(micro.LAPICEOI, 0)
	a.Pop(micro.RBX)
	a.Pop(micro.RDX)
	a.Pop(micro.RAX)
	a.Iretq()
	a.Bind(main)
	a.EnableLAPIC()
	a.IOAPICRoute(int(gsi), vector, true)
	a.ToUser(boot.MicroUserCS, boot.MicroUserDS, true)
	a.Report(micro.ReadyAddr)
	a.SpinUntil(counter, 1)
	a.Report(micro.ReadyAddr)
	// Wait for the test to publish a target, then for the counter to reach it.
	a.MovImm(micro.RBX, target)
	a.MovImm(micro.RDX, 0)
	wait := a.Here()
	a.Load64(micro.RCX, micro.RBX, 0)
	a.Cmp(micro.RCX, micro.RDX)
	a.J(micro.Equal, wait)
	a.Load64(micro.RAX, micro.RBX, -8)
	a.Cmp(micro.RAX, micro.RCX)
	a.J(micro.Below, wait)
	a.Report(micro.DoneAddr)
	a.Halt()
	code, err := a.Assemble()
	require.NoError(t, err)
	g := kvmtest.New(t, kvmtest.Config{Code: code, IRQChip: true,
		Micro: boot.MicroOptions{Kernel: true, IDT: map[uint8]uint64{vector: a.Addr(h)}}})
	irq, err := notify.NewInterrupt(g.VM, gsi, true)
	require.NoError(t, err)
	defer irq.Close()
	line := &countLine{l: irq}
	root, err := pci.NewRoot(pci.Config{PIO: g.PIO, MMIO: g.MMIO,
		Reserved: []memory.Range{{GPA: 0, Size: kvmtest.DefaultRAM}}})
	require.NoError(t, err)
	fn, err := root.Add(slot, pci.Spec{VendorID: 0x1b36, DeviceID: 0x0005, Class: 0xff0000,
		BARs: [6]*pci.BAR{{Kind: pci.BARMem32, Size: 0x1000, Device: nullDev{}}}, Intx: line})
	require.NoError(t, err)
	w, err := notify.NewWorker(notify.Config{Name: "resample", Handler: func(int, uint64) { _ = fn.Resample() }})
	require.NoError(t, err)
	_, _ = w.Add(irq.Resample())
	w.Start()
	defer w.Stop()
	command := func() uint16 {
		var b [2]byte
		fn.ReadConfig(pci.RegCommand, b[:])
		return binary.LittleEndian.Uint16(b[:])
	}

	res := g.Start(time.Minute)
	<-g.Ready // IOAPIC pin routed; the guest waits at CPL3
	require.NoError(t, fn.SetIntx(true))
	<-g.Ready // first interrupt taken; the handler masked INTx
	require.NotZero(t, command()&pci.CmdIntxDisable)
	// Quiescent once every delivered interrupt has been resampled.
	deadline := time.Now().Add(30 * time.Second)
	for w.Stats().Kicks < g.Uint64(counter) {
		require.True(t, time.Now().Before(deadline), "resamples never caught up")
	}
	// Masked: a resample (EOI) must not re-assert.
	before := line.n.Load()
	require.NoError(t, fn.Resample())
	require.Equal(t, before, line.n.Load(), "re-asserted while INTx disabled")
	seen := g.Uint64(counter)
	require.NoError(t, g.Mem.Write64(target, seen+1))
	// User space: clear INTx disable (a 16-bit write of the command register).
	var addr [4]byte
	binary.LittleEndian.PutUint32(addr[:], micro.ConfigAddress(slot, pci.RegCommand))
	g.PIO.Write(pci.PortConfigAddress, addr[:])
	g.PIO.Write(pci.PortConfigData, []byte{pci.CmdIO | pci.CmdMemory, 0})
	require.Greater(t, line.n.Load(), before, "unmask with the level held re-asserts")
	out := <-res
	require.NoError(t, out.Err)
	require.GreaterOrEqual(t, uint64(out.Value), seen+1, "another interrupt after the unmask")
	require.NotZero(t, command()&pci.CmdIntxDisable, "the handler masked again")
	var status [2]byte
	fn.ReadConfig(pci.RegStatus, status[:])
	require.NotZero(t, binary.LittleEndian.Uint16(status[:])&pci.StatusInterrupt, "device still asserting")
	t.Logf("interrupts taken: %d before the unmask, %d in all; line asserted %d times; %d resamples",
		seen, g.Uint64(counter), line.n.Load(), w.Stats().Kicks)
}

// TestDoorbellFollowsBAR: a doorbell (ioeventfd) inside a trapped BAR moves with the
// BAR when the guest re-programs it; the old address stops catching writes.
func TestDoorbellFollowsBAR(t *testing.T) {
	const off, newBase = 0x40, 0xd800_0000
	oldBase := uint64(pci.DefaultMemBase) // the allocator's first 32-bit address
	a := micro.New(boot.MicroCodeAddr)
	ring := func(addr uint64, n int) {
		for i := 0; i < n; i++ {
			a.StoreImm32(addr, 1)
		}
	}
	ring(oldBase+off, 10)
	a.ConfigWrite32(slot, pci.RegBAR0, newBase)
	ring(newBase+off, 10)
	ring(oldBase+off, 1) // stray: nothing decodes there any more
	a.MovImm(micro.RAX, 1)
	a.Report(micro.DoneAddr)
	a.Halt()
	code, err := a.Assemble()
	require.NoError(t, err)
	g := kvmtest.New(t, kvmtest.Config{Code: code, Micro: boot.MicroOptions{Kernel: true}})
	var db *notify.Doorbell
	var moveErr error
	moved := func(addr uint64, mapped bool) {
		if db == nil {
			db, moveErr = notify.NewDoorbell(g.VM, notify.DoorbellSpec{Addr: addr + off, Len: 4})
			return
		}
		if err := db.Move(addr+off, mapped); err != nil {
			moveErr = err
		}
	}
	root, err := pci.NewRoot(pci.Config{PIO: g.PIO, MMIO: g.MMIO,
		Reserved: []memory.Range{{GPA: 0, Size: kvmtest.DefaultRAM}}})
	require.NoError(t, err)
	fn, err := root.Add(slot, pci.Spec{VendorID: 0x1b36, DeviceID: 0x0006,
		BARs: [6]*pci.BAR{{Kind: pci.BARMem32, Size: 0x1000, Device: nullDev{}, Moved: moved}}})
	require.NoError(t, err)
	require.NoError(t, moveErr)
	require.NotNil(t, db)
	defer db.Close()
	a0, _ := fn.BARAddr(0)
	require.Equal(t, oldBase, a0)

	_, err = g.Run(time.Minute)
	require.NoError(t, err)
	require.NoError(t, moveErr)
	n, err := db.Event().Read()
	require.NoError(t, err)
	require.Equal(t, uint64(20), n, "rings at the old and the new BAR address")
	require.Equal(t, uint64(newBase+off), db.Addr())
	require.Equal(t, uint64(2), g.MMIOExits.Load(), "the stray write and the report")
}

// countLine counts assertions of the INTx line.
type countLine struct {
	l *notify.Interrupt
	n atomic.Uint64
}

func (c *countLine) Trigger() error {
	c.n.Add(1)
	return c.l.Trigger()
}
