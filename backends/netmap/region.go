package netmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrNoSpace is returned (wrapped) when a region pool has no free object left.
var ErrNoSpace = errors.New("region pool exhausted")

// RegionConfig sizes the three pools of a region. Sizes are rounded up to ObjAlign and
// counts up to whole clusters, so the PoolsInfo of the region may show larger values.
type RegionConfig struct {
	IfSize, IfNum     uint32
	RingSize, RingNum uint32
	BufSize, BufNum   uint32
}

// Netmap's minimum private allocator (a VALE port or pipe): see SPECS 1.1.
// maxBufNum bounds a region's buffer pool (netmap's global limit is 1e6; extra
// buffers come on top of the rings' own).
const maxBufNum = 2_000_000

var privateMin = RegionConfig{IfSize: 1024, IfNum: 2, RingSize: 5 * 4096, RingNum: 4, BufSize: 2048, BufNum: 4098}

// RegionConfigFor returns the region a private allocator needs for cfg plus npipes
// pipes, applying netmap's growth rules over its private minimum. As netmap does, the
// ring and buffer counts always include one host ring per direction.
func RegionConfigFor(cfg PortConfig, npipes int) (RegionConfig, error) {
	c, err := cfg.normalize()
	if err != nil {
		return RegionConfig{}, err
	}
	txr := uint64(c.TxRings + 1)
	rxr := uint64(c.RxRings + 1)
	txd, rxd := uint64(c.TxSlots), uint64(c.RxSlots)
	np := uint64(npipes)
	r := privateMin
	r.BufSize = uint32(c.BufSize)
	grow := func(cur *uint32, need uint64) error {
		if need > 1<<32-1 {
			return fmt.Errorf("netmap: region too large (%d objects/bytes)", need)
		}
		if uint64(*cur) < need {
			*cur = uint32(need)
		}
		return nil
	}
	errs := []error{
		grow(&r.IfSize, IfHeaderSize+8*(txr+rxr)),
		grow(&r.IfNum, 2+4*np),
		grow(&r.RingSize, RingHeaderSize+SlotSize*max(txd, rxd)),
		grow(&r.RingNum, txr+rxr+8*np),
		grow(&r.BufNum, (4*np+rxr)*rxd+(4*np+txr)*txd+ReservedBufs+uint64(c.ExtraBufs)),
	}
	return r, errors.Join(errs...)
}

// pool is one of the three object pools.
type pool struct {
	off     uint64 // byte offset of the pool in the region
	objSize uint32
	objNum  uint32
	free    []uint64 // bitmap, 1 = free
	nfree   uint32
}

func poolLayout(objSize, objNum uint32, page uint64, what string) (pool, error) {
	if objSize == 0 || objNum == 0 {
		return pool{}, fmt.Errorf("netmap: %s pool: size and count must be non-zero", what)
	}
	sz := (uint64(objSize) + ObjAlign - 1) &^ (ObjAlign - 1)
	// Smallest object count filling whole pages: page / gcd(size, page).
	a, b := sz, page
	for b != 0 {
		a, b = b, a%b
	}
	per := page / a
	if per*sz > MaxClusterSize {
		return pool{}, fmt.Errorf("netmap: %s pool: object size %d needs a cluster above %d bytes", what, sz, MaxClusterSize)
	}
	num := (uint64(objNum) + per - 1) / per * per
	if num > 1<<32-1 || sz > 1<<32-1 {
		return pool{}, fmt.Errorf("netmap: %s pool too large", what)
	}
	return pool{objSize: uint32(sz), objNum: uint32(num)}, nil
}

func (p *pool) bytes() uint64 { return uint64(p.objSize) * uint64(p.objNum) }

func (p *pool) initFree(reserved uint32) {
	p.free = make([]uint64, (p.objNum+63)/64)
	for i := reserved; i < p.objNum; i++ {
		p.free[i/64] |= 1 << (i % 64)
	}
	p.nfree = p.objNum - min(reserved, p.objNum)
}

func (p *pool) alloc() (uint32, bool) {
	for w, v := range p.free {
		if v != 0 {
			bit := uint32(bits.TrailingZeros64(v))
			p.free[w] &^= 1 << bit
			p.nfree--
			return uint32(w)*64 + bit, true
		}
	}
	return 0, false
}

// release frees object i; false if i is out of range or already free.
func (p *pool) release(i uint32) bool {
	if i >= p.objNum || p.free[i/64]&(1<<(i%64)) != 0 {
		return false
	}
	p.free[i/64] |= 1 << (i % 64)
	p.nfree++
	return true
}

// Region is one netmap memory region ("allocator", mem id): a memfd mapped shared, with
// the netmap_if pool, the ring pool and the buffer pool back to back.
//
// Concurrency: allocation methods are safe for concurrent use. Bytes may be read and
// written by any goroutine, another process or a guest; ring fields follow the
// head/cur/tail protocol.
type Region struct {
	mem     []byte
	fd      int
	id      uint16
	mapSize uint64 // memfd size

	mu    sync.Mutex
	refs  int
	if_   pool
	ring  pool
	buf   pool
	freed bool
}

var (
	memIDMu sync.Mutex
	memIDs  = map[uint16]bool{}
)

// Mem id 1 is netmap's global allocator; private ones start at 2.
func allocMemID() (uint16, error) {
	memIDMu.Lock()
	defer memIDMu.Unlock()
	for id := uint16(2); id != 0; id++ {
		if !memIDs[id] {
			memIDs[id] = true
			return id, nil
		}
	}
	return 0, errors.New("netmap: out of memory region ids")
}

func freeMemID(id uint16) {
	memIDMu.Lock()
	delete(memIDs, id)
	memIDMu.Unlock()
}

// NewRegion creates a region: a memfd of the pools' total size, mapped shared. The
// caller holds one reference; Close drops it.
func NewRegion(cfg RegionConfig) (*Region, error) {
	if cfg.IfSize > 4096 {
		return nil, fmt.Errorf("netmap: netmap_if size %d above 4096", cfg.IfSize)
	}
	if cfg.RingSize > 32*4096 || cfg.RingSize < RingHeaderSize+MinSlots*SlotSize {
		return nil, fmt.Errorf("netmap: ring size %d outside %d..%d", cfg.RingSize, RingHeaderSize+MinSlots*SlotSize, 32*4096)
	}
	if cfg.BufSize < MinBufSize || cfg.BufSize > MaxBufSize {
		return nil, fmt.Errorf("netmap: buffer size %d outside %d..%d", cfg.BufSize, MinBufSize, MaxBufSize)
	}
	if cfg.BufNum < ReservedBufs+2 || cfg.BufNum > maxBufNum {
		return nil, fmt.Errorf("netmap: buffer count %d outside %d..%d", cfg.BufNum, ReservedBufs+2, maxBufNum)
	}
	page := uint64(unix.Getpagesize())
	r := &Region{fd: -1, refs: 1}
	var err error
	if r.if_, err = poolLayout(cfg.IfSize, cfg.IfNum, page, "netmap_if"); err != nil {
		return nil, err
	}
	if r.ring, err = poolLayout(cfg.RingSize, cfg.RingNum, page, "ring"); err != nil {
		return nil, err
	}
	if r.buf, err = poolLayout(cfg.BufSize, cfg.BufNum, page, "buffer"); err != nil {
		return nil, err
	}
	r.if_.off = 0
	r.ring.off = r.if_.bytes()
	r.buf.off = r.ring.off + r.ring.bytes()
	size := r.buf.off + r.buf.bytes()
	r.if_.initFree(0)
	r.ring.initFree(0)
	r.buf.initFree(ReservedBufs)
	if r.id, err = allocMemID(); err != nil {
		return nil, err
	}
	r.fd, err = unix.MemfdCreate("ptvmm-netmap", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		freeMemID(r.id)
		return nil, fmt.Errorf("netmap: memfd_create: %w", err)
	}
	// The file is sized to the next power of two (sparse: costs nothing) so the
	// region can be mapped whole as a PCI BAR, whose size must be a power of two.
	r.mapSize = uint64(1) << bits.Len64(size-1)
	if err := unix.Ftruncate(r.fd, int64(r.mapSize)); err != nil {
		r.release()
		return nil, fmt.Errorf("netmap: size region to %d bytes: %w", r.mapSize, err)
	}
	r.mem, err = unix.Mmap(r.fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		r.release()
		return nil, fmt.Errorf("netmap: map region of %d bytes: %w", size, err)
	}
	return r, nil
}

func (r *Region) release() {
	if r.mem != nil {
		_ = unix.Munmap(r.mem)
		r.mem = nil
	}
	if r.fd >= 0 {
		_ = unix.Close(r.fd)
		r.fd = -1
	}
	freeMemID(r.id)
	r.freed = true
}

// Ref takes a reference (a port placed in the region holds one).
func (r *Region) Ref() {
	r.mu.Lock()
	r.refs++
	r.mu.Unlock()
}

// Close drops a reference; the last one unmaps the region and closes the memfd.
func (r *Region) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refs <= 0 {
		return errors.New("netmap: region closed twice")
	}
	r.refs--
	if r.refs == 0 {
		r.release()
	}
	return nil
}

// Bytes is the whole mapped region. Valid until the last reference is dropped.
func (r *Region) Bytes() []byte { return r.mem }

// FD is the memfd backing the region (map it into a guest or pass it to a process).
func (r *Region) FD() int { return r.fd }

// MapSize is the memfd's size: Size rounded up to a power of two, so the whole file
// can back a PCI BAR. Bytes past Size read as zero and are not used.
func (r *Region) MapSize() uint64 { return r.mapSize }

// Size is nr_memsize.
func (r *Region) Size() uint64 { return uint64(len(r.mem)) }

// ID is the region's mem id (2..65535; 1 would be netmap's global allocator).
func (r *Region) ID() uint16 { return r.id }

// PoolsInfo is the nmreq_pools_info of the region.
func (r *Region) PoolsInfo() PoolsInfo {
	return PoolsInfo{
		MemSize: uint64(len(r.mem)), MemID: r.id,
		IfPoolOffset: r.if_.off, IfObjTotal: r.if_.objNum, IfObjSize: r.if_.objSize,
		RingPoolOffset: r.ring.off, RingObjTotal: r.ring.objNum, RingObjSize: r.ring.objSize,
		BufPoolOffset: r.buf.off, BufObjTotal: r.buf.objNum, BufObjSize: r.buf.objSize,
	}
}

// BufSize is the size of every buffer.
func (r *Region) BufSize() uint32 { return r.buf.objSize }

// NumBufs is the buffer pool's object count (valid indices are 2..NumBufs-1).
func (r *Region) NumBufs() uint32 { return r.buf.objNum }

// ValidBuf says whether idx names a buffer that may carry data: in range and not one of
// the reserved indices 0 and 1.
func (r *Region) ValidBuf(idx uint32) bool { return idx >= ReservedBufs && idx < r.buf.objNum }

// Buf is buffer idx, or nil if idx is not ValidBuf.
func (r *Region) Buf(idx uint32) []byte {
	if !r.ValidBuf(idx) {
		return nil
	}
	o := r.buf.off + uint64(idx)*uint64(r.buf.objSize)
	return r.mem[o : o+uint64(r.buf.objSize) : o+uint64(r.buf.objSize)]
}

// FreeBufs is how many buffers are free in the pool.
func (r *Region) FreeBufs() uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.nfree
}

// AllocBufs fills idx with free buffer indices; on shortage it frees what it took and
// returns ErrNoSpace.
func (r *Region) AllocBufs(idx []uint32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range idx {
		v, ok := r.buf.alloc()
		if !ok {
			for _, w := range idx[:i] {
				r.buf.release(w)
			}
			return fmt.Errorf("netmap: region %d: allocate %d buffers: %w", r.id, len(idx), ErrNoSpace)
		}
		idx[i] = v
	}
	return nil
}

// FreeBufList returns buffers to the pool. Invalid or already free indices (a peer may
// have corrupted them) are skipped and counted in the result.
func (r *Region) FreeBufList(idx []uint32) (bad int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, v := range idx {
		if !r.ValidBuf(v) || !r.buf.release(v) {
			bad++
		}
	}
	return bad
}

// freeBufChain frees a list linked through the first u32 of each buffer (extra
// buffers, ni_bufs_head), bounded by the pool size so a cycle cannot loop forever.
func (r *Region) freeBufChain(head uint32) (n, bad int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := uint32(0); head != 0 && i < r.buf.objNum; i++ {
		b := r.Buf(head)
		if b == nil || !r.buf.release(head) {
			bad++
			break
		}
		n++
		head = binary.LittleEndian.Uint32(b)
	}
	return n, bad
}

func (r *Region) allocObj(p *pool, what string) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := p.alloc()
	if !ok {
		return 0, fmt.Errorf("netmap: region %d: allocate %s: %w", r.id, what, ErrNoSpace)
	}
	o := p.off + uint64(i)*uint64(p.objSize)
	clear(r.mem[o : o+uint64(p.objSize)])
	return o, nil
}

func (r *Region) freeObj(p *pool, off uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p.release(uint32((off - p.off) / uint64(p.objSize)))
}
