package ptmemdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// MemdevStats are a memdev's counters.
type MemdevStats struct {
	// BadAccesses counts register accesses that are not aligned 32-bit reads, and
	// every write (the registers are read-only).
	BadAccesses uint64
}

// Memdev is the ptnetmap memdev (1b36:000c): BAR0 holds the region's pool registers,
// BAR1 is the region itself, the memfd mapped shared and installed as guest memory (a
// KVM memslot), so the guest reads and writes the rings and buffers without exits.
//
// Concurrency: Read and Write (BAR0) may be called from any goroutine. Close once,
// after the function was removed from the bus.
type Memdev struct {
	reg  *netmap.Region
	info netmap.PoolsInfo
	host []byte // MapSize bytes of the region's memfd, mapped shared

	bad  atomic.Uint64
	once sync.Once
}

// NewMemdev maps r's memfd whole (Region.MapSize bytes, a power of two) for BAR1 and
// takes a reference on r that Close drops.
func NewMemdev(r *netmap.Region) (*Memdev, error) {
	if r == nil {
		return nil, errors.New("ptmemdev: memdev without a region")
	}
	m, err := NewMemdevFD(r.FD(), r.PoolsInfo(), r.MapSize())
	if err != nil {
		return nil, err
	}
	r.Ref()
	m.reg = r
	return m, nil
}

// NewMemdevFD maps a region that lives in another process (a switch service): fd
// is its memfd (the caller keeps it; the mapping keeps the memory), info its
// pools, mapSize the memfd's size (a power of two). Region() is then nil.
func NewMemdevFD(fd int, info netmap.PoolsInfo, mapSize uint64) (*Memdev, error) {
	size := mapSize
	if size < 4096 || bits.OnesCount64(size) != 1 || size > 1<<40 {
		return nil, fmt.Errorf("ptmemdev: memdev: region %d maps %#x bytes, not a power of two of at least a page", info.MemID, size)
	}
	if info.MemSize > size {
		return nil, fmt.Errorf("ptmemdev: memdev: region %d is %d bytes, more than its %d-byte mapping", info.MemID, info.MemSize, size)
	}
	if info.BufPoolOffset > 0xffff_ffff {
		// The offset registers are 32 bits wide.
		return nil, fmt.Errorf("ptmemdev: memdev: region %d's buffer pool starts at %#x, beyond the 32-bit registers", info.MemID, info.BufPoolOffset)
	}
	host, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("ptmemdev: memdev: map region %d (%d bytes): %w", info.MemID, size, err)
	}
	return &Memdev{info: info, host: host}, nil
}

// MemID is the region's mem id, the MEMID register; a ptnet's HOSTMEMID names it.
func (m *Memdev) MemID() uint16 { return m.info.MemID }

// Region is the region behind BAR1 (nil when it lives in another process).
func (m *Memdev) Region() *netmap.Region { return m.reg }

// Host is BAR1's host mapping (the guest sees these bytes at BAR1).
func (m *Memdev) Host() []byte { return m.host }

// Stats returns the counters. Safe from any goroutine.
func (m *Memdev) Stats() MemdevStats { return MemdevStats{BadAccesses: m.bad.Load()} }

// Spec is the PCI function: BAR0 I/O registers, BAR1 the region as a 64-bit
// prefetchable host-backed memory BAR. No interrupt pin.
func (m *Memdev) Spec() pci.Spec {
	s := pci.Spec{
		VendorID: VendorID, DeviceID: MemdevDeviceID,
		SubVendorID: VendorID, SubsystemID: SubsystemID,
		Class: MemdevClass,
	}
	s.BARs[RegsBAR] = &pci.BAR{Kind: pci.BARIO, Size: MemdevRegsSize, Device: m}
	s.BARs[MemBAR] = &pci.BAR{Kind: pci.BARMem64, Prefetchable: true, Size: uint64(len(m.host)), Host: m.host}
	return s
}

// Read serves a BAR0 read: aligned dwords only; anything else reads as zero.
func (m *Memdev) Read(off uint64, data []byte) {
	clear(data)
	if len(data) != 4 || off%4 != 0 || off >= MemdevRegsSize {
		m.bad.Add(1)
		return
	}
	binary.LittleEndian.PutUint32(data, m.reg32(off))
}

// Write counts and drops the write: every memdev register is read-only.
func (m *Memdev) Write(uint64, []byte) { m.bad.Add(1) }

func (m *Memdev) reg32(off uint64) uint32 {
	p := m.info
	switch off {
	case MemRegMemsizeLo:
		return uint32(p.MemSize)
	case MemRegMemsizeHi:
		return uint32(p.MemSize >> 32)
	case MemRegMemID:
		return uint32(p.MemID)
	case MemRegIfPoolOfs:
		return uint32(p.IfPoolOffset)
	case MemRegIfPoolObjNum:
		return p.IfObjTotal
	case MemRegIfPoolObjSz:
		return p.IfObjSize
	case MemRegRingPoolOfs:
		return uint32(p.RingPoolOffset)
	case MemRegRingObjNum:
		return p.RingObjTotal
	case MemRegRingObjSz:
		return p.RingObjSize
	case MemRegBufPoolOfs:
		return uint32(p.BufPoolOffset)
	case MemRegBufObjNum:
		return p.BufObjTotal
	case MemRegBufObjSz:
		return p.BufObjSize
	}
	return 0
}

// Close unmaps BAR1's host mapping and drops the region reference. The function must
// be off the bus first (pci.Root.Remove), so that no memslot still points here.
func (m *Memdev) Close() error {
	var err error
	m.once.Do(func() {
		if m.host != nil {
			err = unix.Munmap(m.host)
			m.host = nil
		}
		if m.reg != nil {
			err = errors.Join(err, m.reg.Close())
		}
	})
	if err != nil {
		return fmt.Errorf("ptmemdev: memdev close: %w", err)
	}
	return nil
}
