package pci_test

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/kvmtest"
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
