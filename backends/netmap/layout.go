package netmap

import (
	"encoding/binary"
	"fmt"
)

// Byte layout of the shared structures (little-endian, LP64), as netmap defines them.
// Nothing in this package casts region bytes to Go structs: fields are read and written
// at these offsets.

// struct netmap_slot.
const (
	SlotSize      = 16
	SlotBufIdxOff = 0 // u32 buffer index in the buffer pool
	SlotLenOff    = 4 // u16 bytes in this slot
	SlotFlagsOff  = 6 // u16 NS_* flags
	SlotPtrOff    = 8 // u64 user VA (NS_INDIRECT) or data offset
)

// Slot flags (netmap_slot.flags).
const (
	NSBufChanged = 0x0001 // buf_idx changed; set by whoever swaps a buffer
	NSReport     = 0x0002
	NSForward    = 0x0004
	NSNoLearn    = 0x0008
	NSIndirect   = 0x0010
	NSMoreFrag   = 0x0020 // set on all but the last slot of a frame
	NSTxMon      = 0x0040
	NSPortShift  = 8
	NSPortMask   = 0xff00
	// MaxFrags is NETMAP_MAX_FRAGS: the longest MOREFRAG chain a switch forwards.
	MaxFrags = 64
)

// struct netmap_ring header; slots follow at RingSlotsOff.
const (
	RingHeaderSize    = 256
	RingBufOfsOff     = 0  // i64: buffer 0 = ring + buf_ofs
	RingNumSlotsOff   = 8  // u32
	RingBufSizeOff    = 12 // u32
	RingIDOff         = 16 // u16
	RingDirOff        = 18 // u16: 0 tx, 1 rx
	RingHeadOff       = 20 // u32, user
	RingCurOff        = 24 // u32, user
	RingTailOff       = 28 // u32, kernel
	RingFlagsOff      = 32 // u32, user
	RingTSOff         = 40 // timeval {i64 sec; i64 usec}
	RingOffsetMaskOff = 56 // u64
	RingBufAlignOff   = 64 // u64
	RingSemOff        = 128
	RingSlotsOff      = 256
)

// Ring flags (netmap_ring.flags).
const (
	NRTimestamp = 0x2
	NRForward   = 0x4
)

// struct netmap_if; ring_ofs[] follows at IfRingOfsOff.
const (
	IfHeaderSize     = 56
	IfNameOff        = 0 // char[16]
	IfNameSize       = 16
	IfVersionOff     = 16
	IfFlagsOff       = 20
	IfTxRingsOff     = 24
	IfRxRingsOff     = 28
	IfBufsHeadOff    = 32
	IfHostTxRingsOff = 36
	IfHostRxRingsOff = 40
	IfSpareOff       = 44
	IfRingOfsOff     = 56 // i64[]: HW tx, host tx, HW rx, host rx; relative to nifp
)

// netmap_if flags and constants.
const (
	NIPrivMem = 0x1
	// APIVersion is NETMAP_API, written into ni_version.
	APIVersion = 14
)

// Region layout rules.
const (
	// ObjAlign is the granularity of every pool object size (NM_BUF_ALIGN).
	ObjAlign = 64
	// MaxClusterSize bounds a pool cluster.
	MaxClusterSize = 4 << 20
	// ReservedBufs: buffer indices 0 and 1 are never handed out.
	ReservedBufs = 2
)

// Port limits and defaults.
const (
	DefaultSlots   = 1024 // VALE port default slots per ring
	MaxSlots       = 4096
	MinSlots       = 2 // one slot always stays empty
	DefaultBufSize = 2048
	MinBufSize     = 64
	MaxBufSize     = 65536
	MaxRings       = 16 // per direction (VALE limit)
	MaxExtraBufs   = 1000000
)

// PoolsInfoSize is sizeof(struct nmreq_pools_info).
const PoolsInfoSize = 64

// PoolsInfo is struct nmreq_pools_info: where the three pools of a region are. The
// ptnet memdev exports these values as registers.
type PoolsInfo struct {
	MemSize        uint64
	MemID          uint16
	IfPoolOffset   uint64
	IfObjTotal     uint32
	IfObjSize      uint32
	RingPoolOffset uint64
	RingObjTotal   uint32
	RingObjSize    uint32
	BufPoolOffset  uint64
	BufObjTotal    uint32
	BufObjSize     uint32
}

// Encode writes p as nmreq_pools_info into b[:PoolsInfoSize] (padding zeroed).
func (p PoolsInfo) Encode(b []byte) {
	b = b[:PoolsInfoSize]
	clear(b)
	le := binary.LittleEndian
	le.PutUint64(b[0:], p.MemSize)
	le.PutUint16(b[8:], p.MemID)
	le.PutUint64(b[16:], p.IfPoolOffset)
	le.PutUint32(b[24:], p.IfObjTotal)
	le.PutUint32(b[28:], p.IfObjSize)
	le.PutUint64(b[32:], p.RingPoolOffset)
	le.PutUint32(b[40:], p.RingObjTotal)
	le.PutUint32(b[44:], p.RingObjSize)
	le.PutUint64(b[48:], p.BufPoolOffset)
	le.PutUint32(b[56:], p.BufObjTotal)
	le.PutUint32(b[60:], p.BufObjSize)
}

// DecodePoolsInfo reads an nmreq_pools_info.
func DecodePoolsInfo(b []byte) (PoolsInfo, error) {
	if len(b) < PoolsInfoSize {
		return PoolsInfo{}, fmt.Errorf("netmap: pools info needs %d bytes, have %d", PoolsInfoSize, len(b))
	}
	le := binary.LittleEndian
	return PoolsInfo{
		MemSize:        le.Uint64(b[0:]),
		MemID:          le.Uint16(b[8:]),
		IfPoolOffset:   le.Uint64(b[16:]),
		IfObjTotal:     le.Uint32(b[24:]),
		IfObjSize:      le.Uint32(b[28:]),
		RingPoolOffset: le.Uint64(b[32:]),
		RingObjTotal:   le.Uint32(b[40:]),
		RingObjSize:    le.Uint32(b[44:]),
		BufPoolOffset:  le.Uint64(b[48:]),
		BufObjTotal:    le.Uint32(b[56:]),
		BufObjSize:     le.Uint32(b[60:]),
	}, nil
}

// Slot is one netmap_slot, decoded.
type Slot struct {
	BufIdx uint32
	Len    uint16
	Flags  uint16
	Ptr    uint64
}

func getSlot(b []byte, off uint64) Slot {
	s := b[off : off+SlotSize]
	le := binary.LittleEndian
	return Slot{BufIdx: le.Uint32(s[0:]), Len: le.Uint16(s[4:]), Flags: le.Uint16(s[6:]), Ptr: le.Uint64(s[8:])}
}

func putSlot(b []byte, off uint64, v Slot) {
	s := b[off : off+SlotSize]
	le := binary.LittleEndian
	le.PutUint32(s[0:], v.BufIdx)
	le.PutUint16(s[4:], v.Len)
	le.PutUint16(s[6:], v.Flags)
	le.PutUint64(s[8:], v.Ptr)
}

// PortInfoSize is sizeof(struct nmreq_port_info_get).
const PortInfoSize = 32

// PortInfo is struct nmreq_port_info_get: what NETMAP_REQ_PORT_INFO_GET reports, and
// what the ptnet registers NIFP_OFS/NUM_* refresh from (with the nifp offset).
type PortInfo struct {
	MemSize                  uint64
	TxSlots, RxSlots         uint32
	TxRings, RxRings         uint16
	HostTxRings, HostRxRings uint16
	MemID                    uint16
}

// Encode writes p as nmreq_port_info_get into b[:PortInfoSize] (padding zeroed).
func (p PortInfo) Encode(b []byte) {
	b = b[:PortInfoSize]
	clear(b)
	le := binary.LittleEndian
	le.PutUint64(b[0:], p.MemSize)
	le.PutUint32(b[8:], p.TxSlots)
	le.PutUint32(b[12:], p.RxSlots)
	le.PutUint16(b[16:], p.TxRings)
	le.PutUint16(b[18:], p.RxRings)
	le.PutUint16(b[20:], p.HostTxRings)
	le.PutUint16(b[22:], p.HostRxRings)
	le.PutUint16(b[24:], p.MemID)
}
