package netmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// PortConfig describes a port. Zero values take the defaults.
type PortConfig struct {
	Name string
	// TxRings and RxRings are the HW ring counts (default 1, max MaxRings).
	TxRings, RxRings int
	// HostRings is 0 (default, as VALE ports) or 1: one host TX and one host RX ring.
	HostRings int
	// TxSlots and RxSlots are slots per ring (default DefaultSlots, MinSlots..MaxSlots).
	TxSlots, RxSlots int
	// BufSize is the buffer size of a private region (default 2048; MinBufSize..MaxBufSize).
	// Ignored when Region is set (the region's buffer size applies).
	BufSize int
	// ExtraBufs buffers are linked from ni_bufs_head for the user.
	ExtraBufs int
	// Region, when set, places the port in that shared region (the port takes a
	// reference). Nil gives the port a private region of its own, as a VALE port has.
	Region *Region
	// Pipes is how many pipes a private region is sized to hold on top of the port.
	Pipes int
}

func (c PortConfig) normalize() (PortConfig, error) {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.TxRings, 1)
	def(&c.RxRings, 1)
	def(&c.TxSlots, DefaultSlots)
	def(&c.RxSlots, DefaultSlots)
	def(&c.BufSize, DefaultBufSize)
	switch {
	case c.TxRings < 1 || c.TxRings > MaxRings || c.RxRings < 1 || c.RxRings > MaxRings:
		return c, fmt.Errorf("netmap: port %q: rings must be 1..%d, got tx %d rx %d", c.Name, MaxRings, c.TxRings, c.RxRings)
	case c.HostRings < 0 || c.HostRings > 1:
		return c, fmt.Errorf("netmap: port %q: host rings must be 0 or 1, got %d", c.Name, c.HostRings)
	case c.TxSlots < MinSlots || c.TxSlots > MaxSlots || c.RxSlots < MinSlots || c.RxSlots > MaxSlots:
		return c, fmt.Errorf("netmap: port %q: slots must be %d..%d, got tx %d rx %d", c.Name, MinSlots, MaxSlots, c.TxSlots, c.RxSlots)
	case c.BufSize < MinBufSize || c.BufSize > MaxBufSize:
		return c, fmt.Errorf("netmap: port %q: buffer size must be %d..%d, got %d", c.Name, MinBufSize, MaxBufSize, c.BufSize)
	case c.ExtraBufs < 0 || c.ExtraBufs > MaxExtraBufs:
		return c, fmt.Errorf("netmap: port %q: extra buffers must be 0..%d, got %d", c.Name, MaxExtraBufs, c.ExtraBufs)
	case c.Pipes < 0 || c.Pipes > 1024:
		return c, fmt.Errorf("netmap: port %q: pipes must be 0..1024, got %d", c.Name, c.Pipes)
	}
	return c, nil
}

// Port is a netmap port: a netmap_if and its rings in a region, with the kernel-side
// state of every ring. Ring order everywhere (Krings, ring_ofs): HW TX, host TX, HW RX,
// host RX. The netmap_if always reports at least one host ring per direction, as netmap
// does; when the port has none, those ring_ofs entries are 0.
//
// Concurrency: ring methods follow Kring's contract; Close once, with no sync running.
type Port struct {
	name  string
	reg   *Region
	priv  bool
	nifp  uint64
	ifOK  bool // nifp allocated
	nTx   int
	nRx   int
	nHost int
	tx    []*Kring // HW then host
	rx    []*Kring

	closeMu sync.Mutex
	closed  bool
	onClose []func()
}

// NewPort creates a port, allocating its netmap_if, rings and buffers.
func NewPort(cfg PortConfig) (*Port, error) {
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	p := &Port{name: c.Name, nTx: c.TxRings, nRx: c.RxRings, nHost: c.HostRings}
	if c.Region != nil {
		c.Region.Ref()
		p.reg = c.Region
	} else {
		rc, err := RegionConfigFor(c, c.Pipes)
		if err != nil {
			return nil, err
		}
		if p.reg, err = NewRegion(rc); err != nil {
			return nil, err
		}
		p.priv = true
	}
	if err := p.build(c); err != nil {
		p.teardown()
		return nil, fmt.Errorf("netmap: port %q: %w", c.Name, err)
	}
	return p, nil
}

func (p *Port) build(c PortConfig) error {
	r := p.reg
	hostRep := max(p.nHost, 1)
	nofs := p.nTx + p.nRx + 2*hostRep
	if need := IfHeaderSize + 8*nofs; uint32(need) > r.if_.objSize {
		return fmt.Errorf("netmap_if needs %d bytes, region objects have %d", need, r.if_.objSize)
	}
	for _, s := range []int{c.TxSlots, c.RxSlots} {
		if need := RingHeaderSize + SlotSize*s; uint32(need) > r.ring.objSize {
			return fmt.Errorf("a ring of %d slots needs %d bytes, region objects have %d", s, need, r.ring.objSize)
		}
	}
	var err error
	if p.nifp, err = r.allocObj(&r.if_, "netmap_if"); err != nil {
		return err
	}
	p.ifOK = true
	mk := func(dir Dir, id int, host bool, slots int) (*Kring, error) {
		off, err := r.allocObj(&r.ring, "ring")
		if err != nil {
			return nil, err
		}
		k := newKring(p, r, off, uint32(slots), dir, uint16(id), host)
		idx := make([]uint32, slots)
		if err := r.AllocBufs(idx); err != nil {
			r.freeObj(&r.ring, off)
			return nil, err
		}
		le := binary.LittleEndian
		h := r.mem[off:]
		le.PutUint64(h[RingBufOfsOff:], r.buf.off-off)
		le.PutUint32(h[RingNumSlotsOff:], uint32(slots))
		le.PutUint32(h[RingBufSizeOff:], r.buf.objSize)
		le.PutUint16(h[RingIDOff:], uint16(id))
		le.PutUint16(h[RingDirOff:], uint16(dir))
		le.PutUint32(h[RingTailOff:], k.hwtail)
		for i, b := range idx {
			putSlot(r.mem, k.slotOff(uint32(i)), Slot{BufIdx: b})
		}
		return k, nil
	}
	for i := 0; i < p.nTx+p.nHost; i++ {
		k, err := mk(TX, i, i >= p.nTx, c.TxSlots)
		if err != nil {
			return err
		}
		p.tx = append(p.tx, k)
	}
	for i := 0; i < p.nRx+p.nHost; i++ {
		k, err := mk(RX, i, i >= p.nRx, c.RxSlots)
		if err != nil {
			return err
		}
		p.rx = append(p.rx, k)
	}
	// Extra buffers: a list linked through the first u32 of each buffer.
	var head uint32
	if c.ExtraBufs > 0 {
		idx := make([]uint32, c.ExtraBufs)
		if err := r.AllocBufs(idx); err != nil {
			return err
		}
		for i := len(idx) - 1; i >= 0; i-- {
			binary.LittleEndian.PutUint32(r.Buf(idx[i]), head)
			head = idx[i]
		}
	}
	le := binary.LittleEndian
	ni := r.mem[p.nifp:]
	copy(ni[IfNameOff:IfNameOff+IfNameSize-1], p.name) // NUL-terminated, truncated
	le.PutUint32(ni[IfVersionOff:], APIVersion)
	if p.priv {
		le.PutUint32(ni[IfFlagsOff:], NIPrivMem)
	}
	le.PutUint32(ni[IfTxRingsOff:], uint32(p.nTx))
	le.PutUint32(ni[IfRxRingsOff:], uint32(p.nRx))
	le.PutUint32(ni[IfBufsHeadOff:], head)
	le.PutUint32(ni[IfHostTxRingsOff:], uint32(hostRep))
	le.PutUint32(ni[IfHostRxRingsOff:], uint32(hostRep))
	put := func(slot int, k *Kring) {
		le.PutUint64(ni[IfRingOfsOff+8*slot:], k.off-p.nifp)
	}
	for i, k := range p.tx {
		put(i, k) // HW tx, then the host tx ring right after
	}
	for i, k := range p.rx {
		put(p.nTx+hostRep+i, k)
	}
	return nil
}

// teardown frees whatever the port holds: ring buffers (as the slots now name them),
// the extra-buffer list, ring and netmap_if objects, and the region reference.
func (p *Port) teardown() {
	r := p.reg
	if r == nil {
		return
	}
	for _, k := range append(append([]*Kring(nil), p.tx...), p.rx...) {
		idx := make([]uint32, 0, k.num)
		for i := uint32(0); i < k.num; i++ {
			if b := k.SlotAt(i).BufIdx; r.ValidBuf(b) {
				idx = append(idx, b)
			}
		}
		r.FreeBufList(idx)
		r.freeObj(&r.ring, k.off)
	}
	if p.ifOK {
		head := binary.LittleEndian.Uint32(r.mem[p.nifp+IfBufsHeadOff:])
		r.freeBufChain(head)
		r.freeObj(&r.if_, p.nifp)
	}
	// The krings stay, closed (their syncs return ErrClosed): readers such as a
	// switch's port listing may still walk them, without a lock, while we close.
	_ = r.Close()
	p.reg = nil
}

// Name is the port name.
func (p *Port) Name() string { return p.name }

// Region is the region holding the port.
func (p *Port) Region() *Region { return p.reg }

// PrivateRegion says the region was created for this port alone.
func (p *Port) PrivateRegion() bool { return p.priv }

// NifpOffset is the offset of the port's netmap_if in its region (nr_offset).
func (p *Port) NifpOffset() uint64 { return p.nifp }

// NumTxRings and NumRxRings are the HW ring counts; NumHostRings is 0 or 1.
func (p *Port) NumTxRings() int   { return p.nTx }
func (p *Port) NumRxRings() int   { return p.nRx }
func (p *Port) NumHostRings() int { return p.nHost }

// TxRing is TX kring i: 0..NumTxRings-1 HW, NumTxRings the host ring if any; nil if
// out of range.
func (p *Port) TxRing(i int) *Kring {
	if i < 0 || i >= len(p.tx) {
		return nil
	}
	return p.tx[i]
}

// RxRing is RX kring i, numbered like TxRing.
func (p *Port) RxRing(i int) *Kring {
	if i < 0 || i >= len(p.rx) {
		return nil
	}
	return p.rx[i]
}

// Krings lists every kring, TX ones first (the ptnet ring numbering).
func (p *Port) Krings() []*Kring {
	return append(append([]*Kring(nil), p.tx...), p.rx...)
}

// UserRing returns the user view of kring k of this port. It is built from the
// kernel's own geometry, not from the ring header, which the ring's user (or, in a
// shared region, another port's user) may have overwritten.
func (p *Port) UserRing(k *Kring) *Ring {
	return &Ring{mem: k.mem, off: k.off, num: k.num, bufSize: k.reg.buf.objSize, bufBase: int64(k.reg.buf.off), dir: k.dir}
}

// OnClose registers fn to run when the port closes, before its memory is released.
func (p *Port) OnClose(fn func()) {
	p.closeMu.Lock()
	p.onClose = append(p.onClose, fn)
	p.closeMu.Unlock()
}

// Close frees the port's buffers, rings and netmap_if and drops its region reference.
// It waits for running syncs, outstanding RX leases and running notify calls (so it
// must not be called from a SyncFunc or notify function of this port); afterwards Sync
// returns ErrClosed and RxReserve returns empty leases.
func (p *Port) Close() error {
	p.closeMu.Lock()
	if p.closed {
		p.closeMu.Unlock()
		return errors.New("netmap: port " + p.name + " closed twice")
	}
	p.closed = true
	fns := p.onClose
	p.closeMu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
	// Mark every ring closed under its lock, so no sync is running and no new lease
	// starts, and wait for leases other ports' syncs still fill: the memory goes away
	// next.
	for _, k := range p.Krings() {
		k.mu.Lock()
		k.closed = true
		k.sync = nil
		for k.leases.head != k.leases.tail {
			k.leaseDone.Wait()
		}
		k.mu.Unlock()
		k.SetNotify(nil) // and for notifications still running
	}
	p.teardown()
	return nil
}

// If is a user view of a netmap_if (netmap_user.h arithmetic), checked once on open.
type If struct {
	mem                              []byte
	nifp                             uint64
	name                             string
	txRings, rxRings, hostTx, hostRx uint32
}

// OpenIf reads the netmap_if at nifp in mem.
func OpenIf(mem []byte, nifp uint64) (*If, error) {
	if nifp%8 != 0 || nifp > uint64(len(mem)) || uint64(len(mem))-nifp < IfHeaderSize {
		return nil, fmt.Errorf("netmap: netmap_if at %#x is outside the %d-byte region or misaligned", nifp, len(mem))
	}
	le := binary.LittleEndian
	h := mem[nifp:]
	f := &If{mem: mem, nifp: nifp,
		txRings: le.Uint32(h[IfTxRingsOff:]), rxRings: le.Uint32(h[IfRxRingsOff:]),
		hostTx: le.Uint32(h[IfHostTxRingsOff:]), hostRx: le.Uint32(h[IfHostRxRingsOff:])}
	name := h[IfNameOff : IfNameOff+IfNameSize]
	for i, c := range name {
		if c == 0 {
			name = name[:i]
			break
		}
	}
	f.name = string(name)
	n := uint64(f.txRings) + uint64(f.rxRings) + uint64(f.hostTx) + uint64(f.hostRx)
	if n > 4*1024 || uint64(len(mem))-nifp-IfRingOfsOff < 8*n {
		return nil, fmt.Errorf("netmap: netmap_if at %#x: %d rings do not fit the region", nifp, n)
	}
	return f, nil
}

// Name is ni_name.
func (f *If) Name() string { return f.name }

// TxRings, RxRings, HostTxRings, HostRxRings are the counts the netmap_if reports.
func (f *If) TxRings() int     { return int(f.txRings) }
func (f *If) RxRings() int     { return int(f.rxRings) }
func (f *If) HostTxRings() int { return int(f.hostTx) }
func (f *If) HostRxRings() int { return int(f.hostRx) }

// BufsHead is ni_bufs_head (first extra buffer, 0 = none).
func (f *If) BufsHead() uint32 { return load32(f.mem, f.nifp+IfBufsHeadOff) }

// SetBufsHead writes ni_bufs_head (the list the kernel frees on close).
func (f *If) SetBufsHead(v uint32) { store32(f.mem, f.nifp+IfBufsHeadOff, v) }

func (f *If) ring(slot uint32) (*Ring, error) {
	ofs := int64(binary.LittleEndian.Uint64(f.mem[f.nifp+IfRingOfsOff+8*uint64(slot):]))
	if ofs == 0 {
		return nil, fmt.Errorf("netmap: ring_ofs[%d] is 0: ring not bound", slot)
	}
	if ofs < -int64(f.nifp) || ofs > int64(len(f.mem)) {
		return nil, fmt.Errorf("netmap: ring_ofs[%d]=%d points outside the region", slot, ofs)
	}
	return NewRing(f.mem, uint64(int64(f.nifp)+ofs))
}

// TxRing is NETMAP_TXRING(nifp, i): i < TxRings HW, then host TX rings.
func (f *If) TxRing(i int) (*Ring, error) {
	if i < 0 || uint32(i) >= f.txRings+f.hostTx {
		return nil, fmt.Errorf("netmap: tx ring %d out of range (%d+%d)", i, f.txRings, f.hostTx)
	}
	return f.ring(uint32(i))
}

// RxRing is NETMAP_RXRING(nifp, i): ring_ofs[i + ni_tx_rings + ni_host_tx_rings].
func (f *If) RxRing(i int) (*Ring, error) {
	if i < 0 || uint32(i) >= f.rxRings+f.hostRx {
		return nil, fmt.Errorf("netmap: rx ring %d out of range (%d+%d)", i, f.rxRings, f.hostRx)
	}
	return f.ring(uint32(i) + f.txRings + f.hostTx)
}

// Info is the port's nmreq_port_info_get. Host ring counts are what the netmap_if
// reports (at least 1).
func (p *Port) Info() PortInfo {
	host := uint16(max(p.nHost, 1))
	return PortInfo{
		MemSize: p.reg.Size(), MemID: p.reg.ID(),
		TxSlots: p.tx[0].num, RxSlots: p.rx[0].num,
		TxRings: uint16(p.nTx), RxRings: uint16(p.nRx),
		HostTxRings: host, HostRxRings: host,
	}
}
