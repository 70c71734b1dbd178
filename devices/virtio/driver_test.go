package virtio

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/vmm/memory"
)

// Fake guest layout used by the driver mock: RAM at [0, 1 MiB), rings at fixed spots,
// buffers from bufBase up.
const (
	ramSize   = 1 << 20
	descGPA   = 0x1000
	availGPA  = 0x20000
	usedGPA   = 0x30000
	bufBase   = 0x40000
	indirBase = 0x80000
)

// driver is a guest-side virtqueue driver over fake memory: it writes descriptors
// and avail entries the way Linux's virtio_ring does, and may also write garbage.
type driver struct {
	t         *testing.T
	mem       *memory.Memory
	ram       []byte
	size      uint16
	availIdx  uint16
	nextDesc  uint16
	usedSeen  uint16
	nextBuf   uint64
	nextIndir uint64
	q         *Queue
}

func newDriver(t testing.TB, size uint16, eventIdx, indirect bool) *driver {
	ram := make([]byte, ramSize)
	mem, err := memory.FromBytes([]memory.Region{{Range: memory.Range{GPA: 0, Size: ramSize}, Host: ram, FD: -1}})
	require.NoError(t, err)
	q, err := NewQueue(mem, QueueConfig{Size: size, Desc: descGPA, Avail: availGPA, Used: usedGPA, EventIdx: eventIdx, IndirectDesc: indirect})
	require.NoError(t, err)
	tt, _ := t.(*testing.T)
	return &driver{t: tt, mem: mem, ram: ram, size: size, q: q, nextBuf: bufBase, nextIndir: indirBase}
}

type dbuf struct {
	addr  uint64
	len   uint32
	write bool
}

// buf allocates n bytes of buffer space.
func (d *driver) buf(n uint32, write bool) dbuf {
	a := d.nextBuf
	d.nextBuf += uint64(n+15) &^ 15
	if d.nextBuf > indirBase {
		d.nextBuf = bufBase
		a = bufBase
	}
	return dbuf{addr: a, len: n, write: write}
}

func (d *driver) putDesc(table uint64, i uint16, addr uint64, ln uint32, flags, next uint16) {
	off := table + uint64(i)*16
	binary.LittleEndian.PutUint64(d.ram[off:], addr)
	binary.LittleEndian.PutUint32(d.ram[off+8:], ln)
	binary.LittleEndian.PutUint16(d.ram[off+12:], flags)
	binary.LittleEndian.PutUint16(d.ram[off+14:], next)
}

// chain writes bufs as a direct chain and returns its head.
func (d *driver) chain(bufs ...dbuf) uint16 {
	head := d.nextDesc
	for i, b := range bufs {
		idx := (head + uint16(i)) % d.size
		var fl uint16
		if b.write {
			fl |= DescFWrite
		}
		next := (idx + 1) % d.size
		if i < len(bufs)-1 {
			fl |= DescFNext
		}
		d.putDesc(descGPA, idx, b.addr, b.len, fl, next)
	}
	d.nextDesc = (head + uint16(len(bufs))) % d.size
	return head
}

// indirectChain writes bufs into an indirect table and one direct descriptor for it.
func (d *driver) indirectChain(bufs ...dbuf) uint16 {
	tbl := d.nextIndir
	d.nextIndir += uint64(len(bufs)) * 16
	for i, b := range bufs {
		var fl uint16
		if b.write {
			fl |= DescFWrite
		}
		if i < len(bufs)-1 {
			fl |= DescFNext
		}
		d.putDesc(tbl, uint16(i), b.addr, b.len, fl, uint16(i+1))
	}
	head := d.nextDesc
	d.putDesc(descGPA, head, tbl, uint32(len(bufs))*16, DescFIndirect, 0)
	d.nextDesc = (head + 1) % d.size
	return head
}

// avail publishes head in the avail ring.
func (d *driver) avail(head uint16) {
	binary.LittleEndian.PutUint16(d.ram[availGPA+4+2*uint64(d.availIdx%d.size):], head)
	d.availIdx++
	binary.LittleEndian.PutUint16(d.ram[availGPA+2:], d.availIdx)
}

func (d *driver) setAvailIdx(v uint16) {
	d.availIdx = v
	binary.LittleEndian.PutUint16(d.ram[availGPA+2:], v)
}

func (d *driver) setUsedEvent(v uint16) {
	binary.LittleEndian.PutUint16(d.ram[availGPA+4+2*uint64(d.size):], v)
}

func (d *driver) setAvailFlags(v uint16) { binary.LittleEndian.PutUint16(d.ram[availGPA:], v) }

func (d *driver) usedIdx() uint16 { return binary.LittleEndian.Uint16(d.ram[usedGPA+2:]) }

func (d *driver) usedFlags() uint16 { return binary.LittleEndian.Uint16(d.ram[usedGPA:]) }

func (d *driver) availEvent() uint16 {
	return binary.LittleEndian.Uint16(d.ram[usedGPA+4+8*uint64(d.size):])
}

// used returns the used entries published since the last call.
func (d *driver) used() (ids []uint32, lens []uint32) {
	for d.usedSeen != d.usedIdx() {
		off := usedGPA + 4 + 8*uint64(d.usedSeen%d.size)
		ids = append(ids, binary.LittleEndian.Uint32(d.ram[off:]))
		lens = append(lens, binary.LittleEndian.Uint32(d.ram[off+4:]))
		d.usedSeen++
	}
	return ids, lens
}

// wantKick is the driver's EVENT_IDX kick decision after publishing entries old..new.
func (d *driver) wantKick(old, newIdx uint16) bool {
	return needEvent(d.availEvent(), newIdx, old)
}
