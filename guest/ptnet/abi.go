package ptnet

import (
	"encoding/binary"
	"fmt"
)

// The ABI of guest/kmod/ptvmm_ptnet.c (version 1). abi_test.go checks these
// against the C defines.
const (
	ABIVersion = 1

	// mmap offsets on /dev/ptnetN: one 1 TiB window per area.
	MmapBar1WB = 0x0000000000  // memdev BAR1, write-back
	MmapBar1UC = 0x10000000000 // memdev BAR1, uncached
	MmapRegs   = 0x20000000000 // ptnet BAR0, one page, uncached (FlagRegsMmap)
	MmapCSB    = 0x30000000000 // two pages: atok, then ktoa
	mmapShift  = 40

	// Info flags.
	FlagMemdev   = 0x1 // a memdev with MEMID == HOSTMEMID is bound
	FlagRegsMmap = 0x2 // BAR0 is MMIO and can be mapped
	FlagCreated  = 0x4 // a PTCTL CREATE succeeded, no DELETE since

	iocMagic      = 0xB7
	iocInfoNr     = 1
	iocRegReadNr  = 2
	iocRegWriteNr = 3
	iocWaitNr     = 4
	infoSize      = 88
	regSize       = 8
	waitSize      = 24
)

// Linux _IOC encoding (x86: 2 direction bits, 14 size bits, 8 type, 8 nr).
const (
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | iocMagic<<8 | nr }

var (
	iocInfo     = ioc(iocRead, iocInfoNr, infoSize)
	iocRegRead  = ioc(iocRead|iocWrite, iocRegReadNr, regSize)
	iocRegWrite = ioc(iocRead|iocWrite, iocRegWriteNr, regSize)
	iocWait     = ioc(iocRead|iocWrite, iocWaitNr, waitSize)
)

// ptnet BAR0 registers (SPECS 3.3).
const (
	RegPtfeat     = 0
	RegPtctl      = 4
	RegMacLo      = 8
	RegMacHi      = 12
	RegNifpOfs    = 24
	RegNumTxRings = 28
	RegNumRxRings = 32
	RegNumTxSlots = 36
	RegNumRxSlots = 40
	RegVnetHdrLen = 44
	RegHostMemID  = 48
	regEnd        = 68 // PTNET_IO_END
	RegKickBase   = 128

	PtctlCreate = 1
	PtctlDelete = 2

	// FeatVnetHdr is PTNETMAP_F_VNET_HDR in PTFEAT.
	FeatVnetHdr = 1
	// VnetHdrLen is the virtio-net header length ptnet supports besides 0.
	VnetHdrLen = 12
)

// Info is what the module reports for one ptnet (ioctl INFO). Counts and
// NifpOfs are read from the device on each call.
type Info struct {
	Version    uint32
	Flags      uint32
	NumTxRings uint32
	NumRxRings uint32
	NumTxSlots uint32
	NumRxSlots uint32
	NifpOfs    uint32
	HostMemID  uint32
	MemID      uint32 // the paired memdev's MEMID (with FlagMemdev)
	NumVectors uint32 // MSI-X vectors enabled at probe, one per CSB ring
	MAC        [6]byte
	MemSize    uint64 // the paired memdev's MEMSIZE
	Bar1Phys   uint64
	Bar1Len    uint64
	CSBPhys    uint64 // atok page; the ktoa page follows
	Bar0Len    uint64
}

// decodeInfo reads struct ptvmm_ptnet_info.
func decodeInfo(b []byte) (Info, error) {
	if len(b) < infoSize {
		return Info{}, fmt.Errorf("ptnet: info: %d bytes, want %d", len(b), infoSize)
	}
	le := binary.LittleEndian
	in := Info{
		Version:    le.Uint32(b[0:]),
		Flags:      le.Uint32(b[4:]),
		NumTxRings: le.Uint32(b[8:]),
		NumRxRings: le.Uint32(b[12:]),
		NumTxSlots: le.Uint32(b[16:]),
		NumRxSlots: le.Uint32(b[20:]),
		NifpOfs:    le.Uint32(b[24:]),
		HostMemID:  le.Uint32(b[28:]),
		MemID:      le.Uint32(b[32:]),
		NumVectors: le.Uint32(b[36:]),
		MemSize:    le.Uint64(b[48:]),
		Bar1Phys:   le.Uint64(b[56:]),
		Bar1Len:    le.Uint64(b[64:]),
		CSBPhys:    le.Uint64(b[72:]),
		Bar0Len:    le.Uint64(b[80:]),
	}
	copy(in.MAC[:], b[40:46])
	return in, nil
}

// NumRings is the CSB ring count: TX rings, then RX rings.
func (in Info) NumRings() int { return int(in.NumTxRings) + int(in.NumRxRings) }

// check refuses an Info a driver could not use safely.
func (in Info) check() error {
	switch {
	case in.Version != ABIVersion:
		return fmt.Errorf("ptnet: module ABI version %d, want %d", in.Version, ABIVersion)
	case in.Flags&FlagMemdev == 0:
		return fmt.Errorf("ptnet: no memdev with MEMID %d (the ptnet's HOSTMEMID) is bound to ptvmm_ptnet", in.HostMemID&0xffff)
	case in.NumTxRings == 0 || in.NumRxRings == 0:
		return fmt.Errorf("ptnet: %d tx and %d rx rings, want at least one each", in.NumTxRings, in.NumRxRings)
	case in.NumRings() > maxRings:
		return fmt.Errorf("ptnet: %d rings, at most %d", in.NumRings(), maxRings)
	case uint32(in.NumRings()) != in.NumVectors:
		return fmt.Errorf("ptnet: %d rings now but %d MSI-X vectors from probe: reload the module", in.NumRings(), in.NumVectors)
	case in.MemSize == 0 || in.MemSize > in.Bar1Len:
		return fmt.Errorf("ptnet: MEMSIZE %d does not fit BAR1 (%d bytes)", in.MemSize, in.Bar1Len)
	case uint64(in.NifpOfs) >= in.MemSize:
		return fmt.Errorf("ptnet: NIFP_OFS %#x outside MEMSIZE %#x", in.NifpOfs, in.MemSize)
	}
	return nil
}

// maxRings: two CSB pages of 64-B entries, as netmap's guest driver.
const maxRings = 64

func encodeReg(off, val uint32) []byte {
	b := make([]byte, regSize)
	binary.LittleEndian.PutUint32(b[0:], off)
	binary.LittleEndian.PutUint32(b[4:], val)
	return b
}

func encodeWait(ring uint32, timeoutNs int64, count uint64) []byte {
	b := make([]byte, waitSize)
	binary.LittleEndian.PutUint32(b[0:], ring)
	binary.LittleEndian.PutUint64(b[8:], uint64(timeoutNs))
	binary.LittleEndian.PutUint64(b[16:], count)
	return b
}
