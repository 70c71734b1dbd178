package ptmemdev

import (
	"encoding/binary"
	"math/bits"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

func (r *rig) mdReg(off uint64) uint32 {
	var b [4]byte
	r.pio.Read(r.bar(r.mdFn, RegsBAR)+off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// TestMemdevRegisters: BAR0 holds nmreq_pools_info of the region; the registers are
// read-only and only dword reads answer.
func TestMemdevRegisters(t *testing.T) {
	r := newRig(t, rigOpts{tx: 2, rx: 2})
	p := r.port.Region().PoolsInfo()
	want := map[uint64]uint32{
		MemRegMemsizeLo: uint32(p.MemSize), MemRegMemsizeHi: uint32(p.MemSize >> 32),
		MemRegMemID:     uint32(p.MemID),
		MemRegIfPoolOfs: uint32(p.IfPoolOffset), MemRegIfPoolObjNum: p.IfObjTotal, MemRegIfPoolObjSz: p.IfObjSize,
		MemRegRingPoolOfs: uint32(p.RingPoolOffset), MemRegRingObjNum: p.RingObjTotal, MemRegRingObjSz: p.RingObjSize,
		MemRegBufPoolOfs: uint32(p.BufPoolOffset), MemRegBufObjNum: p.BufObjTotal, MemRegBufObjSz: p.BufObjSize,
	}
	require.NotZero(t, p.MemSize)
	require.NotZero(t, p.BufPoolOffset)
	for off := uint64(0); off < MemdevRegsSize; off += 4 {
		assert.Equal(t, want[off], r.mdReg(off), "register %d", off)
	}
	base := r.bar(r.mdFn, RegsBAR)
	r.pio.Write(base+MemRegMemID, []byte{1, 2, 3, 4})
	assert.Equal(t, uint32(p.MemID), r.mdReg(MemRegMemID), "read-only")
	b := []byte{0xff, 0xff}
	r.pio.Read(base+MemRegMemID, b)
	assert.Equal(t, []byte{0, 0}, b, "word reads are not registers")
	assert.Equal(t, uint64(2), r.md.Stats().BadAccesses)
}

// TestMemdevBAR1IsTheRegion: BAR1 is a memslot of MapSize bytes (a power of two) whose
// bytes are the region's: what the host port writes the guest reads, and back.
func TestMemdevBAR1IsTheRegion(t *testing.T) {
	r := newRig(t, rigOpts{})
	reg := r.port.Region()
	bar1 := r.bar(r.mdFn, MemBAR)
	host, ok := r.mapper.mapped()[bar1]
	require.True(t, ok, "a memslot at BAR1")
	require.Equal(t, reg.MapSize(), uint64(len(host)))
	assert.Equal(t, 1, bits.OnesCount64(reg.MapSize()))
	assert.GreaterOrEqual(t, reg.MapSize(), reg.Size())
	mem := reg.Bytes()
	off := reg.PoolsInfo().BufPoolOffset + 2*uint64(reg.BufSize())
	mem[off] = 0x42
	assert.Equal(t, byte(0x42), host[off], "host write seen through BAR1")
	host[off+1] = 0x24
	assert.Equal(t, byte(0x24), mem[off+1], "guest write seen by the host")
	// The guest finds the ptnet's netmap_if through BAR1 at NIFP_OFS.
	nif, err := netmap.OpenIf(host, uint64(r.rd(RegNifpOfs)))
	require.NoError(t, err)
	assert.Equal(t, r.port.Name(), nif.Name())
}

// TestMemdevBAR1MoveRefused: the guest moving BAR1 over RAM or over another BAR is
// refused by vmm/pci (the memslot is not installed there; the BAR stops decoding until
// moved to a legal place), and moving it somewhere free moves the memslot.
func TestMemdevBAR1MoveRefused(t *testing.T) {
	port, err := netmap.NewPort(netmap.PortConfig{Name: "vale0:m", TxSlots: testSlots, RxSlots: testSlots})
	require.NoError(t, err)
	defer port.Close()
	md, err := NewMemdev(port.Region())
	require.NoError(t, err)
	defer md.Close()
	size := port.Region().MapSize()
	const ramTop = 0x8000_0000 // 2 GiB of "RAM", and more above 4 GiB
	mapper := &fakeMapper{}
	mmio := bus.New("mmio")
	root, err := pci.NewRoot(pci.Config{PIO: bus.New("pio"), MMIO: mmio, Mapper: mapper,
		Reserved: []memory.Range{{GPA: 0, Size: ramTop}, {GPA: 1 << 32, Size: 1 << 32}}})
	require.NoError(t, err)
	fn, err := root.Add(-1, md.Spec())
	require.NoError(t, err)
	defer root.Remove(fn.Slot())
	other, err := root.Add(-1, pci.Spec{VendorID: 1, DeviceID: 2, BARs: [6]*pci.BAR{{Kind: pci.BARMem32, Size: size, Device: nopDev{}}}})
	require.NoError(t, err)
	home, ok := fn.BARAddr(MemBAR)
	require.True(t, ok)
	otherAt, ok := other.BARAddr(0)
	require.True(t, ok)

	move := func(a uint64) {
		fn.WriteConfig(pci.RegBAR0+4*MemBAR+4, binary.LittleEndian.AppendUint32(nil, uint32(a>>32)))
		fn.WriteConfig(pci.RegBAR0+4*MemBAR, binary.LittleEndian.AppendUint32(nil, uint32(a)))
	}
	for _, bad := range []uint64{ramTop - size, 1<<32 + size, otherAt} {
		move(bad)
		addr, mapped := fn.BARAddr(MemBAR)
		assert.Equal(t, bad, addr, "the register holds what the guest wrote")
		assert.False(t, mapped, "BAR1 at %#x must not decode", bad)
		assert.Error(t, fn.BARError(MemBAR))
		_, there := mapper.mapped()[bad]
		assert.False(t, there, "no memslot at %#x", bad)
		assert.Len(t, mapper.mapped(), 0, "the old memslot is gone too")
	}
	assert.ErrorIs(t, func() error { move(ramTop - size); return fn.BARError(MemBAR) }(), pci.ErrReserved)
	// The other device's BAR still works.
	_, ok = other.BARAddr(0)
	assert.True(t, ok)

	free := uint64(0xe000_0000)
	move(free)
	addr, mapped := fn.BARAddr(MemBAR)
	require.True(t, mapped)
	assert.Equal(t, free, addr)
	m := mapper.mapped()
	require.Len(t, m, 1)
	assert.Len(t, m[free], int(size))
	move(home)
	_, ok = mapper.mapped()[home]
	assert.True(t, ok)
}

// TestMemdevRefusesBadRegions: no region, and NewMemdev's reference keeps the region
// mapped after its port closed.
func TestMemdevKeepsRegion(t *testing.T) {
	_, err := NewMemdev(nil)
	require.Error(t, err)
	port, err := netmap.NewPort(netmap.PortConfig{Name: "p", TxSlots: 8, RxSlots: 8})
	require.NoError(t, err)
	md, err := NewMemdev(port.Region())
	require.NoError(t, err)
	require.NoError(t, port.Close())
	require.NotNil(t, md.Region().Bytes(), "the memdev's reference keeps the region")
	md.Host()[0] = 1
	require.NoError(t, md.Close())
	require.NoError(t, md.Close(), "idempotent")
}

type nopDev struct{}

func (nopDev) Read(_ uint64, data []byte) { clear(data) }
func (nopDev) Write(uint64, []byte)       {}
