package netmap

import (
	"sync/atomic"
	"unsafe"
)

// Atomic access to u32 fields of shared memory (ring head/cur/tail, CSB-like fields).
//
// Barrier rule: Go atomics are sequentially consistent, so a Store32 after plain slot
// writes publishes those writes to any goroutine (or process, or guest, on x86 TSO) that
// Load32s the same field and then reads the slots. Writers of slots therefore store the
// index field last; readers load the index first.
//
// off must be a multiple of 4 (all callers pass constant field offsets inside 64-byte
// aligned objects of a page-aligned mapping); the slice bound check happens first so a
// bad offset panics as an ordinary index error, never as a wild access.

func load32(b []byte, off uint64) uint32 {
	p := (*uint32)(unsafe.Pointer(&b[off : off+4][0]))
	return atomic.LoadUint32(p)
}

func store32(b []byte, off uint64, v uint32) {
	p := (*uint32)(unsafe.Pointer(&b[off : off+4][0]))
	atomic.StoreUint32(p, v)
}

// aligned4 says b starts at a 4-byte aligned address (needed for 32-bit atomics on
// memory handed in by a caller, such as CSB arrays). An empty slice is aligned.
func aligned4(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	return uintptr(unsafe.Pointer(&b[0]))%4 == 0
}
