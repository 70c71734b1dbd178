package virtio

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"
)

// The ring indices are u16 fields shared with the guest. Go has no 16-bit atomics, so
// they are accessed through the naturally aligned 32-bit word that contains them. An
// aligned word never crosses a page, so the bytes outside the field are mapped; loads
// just ignore them and stores use compare-and-swap so they are written back unchanged.
// On amd64 every locked instruction (CAS, XCHG) is a full barrier, which is the
// ordering the virtqueue protocol needs (see queue.go).

// wordOf returns the aligned 32-bit word containing b[0:2] and the field's shift in it.
func wordOf(b []byte) (*uint32, uint) {
	off := uintptr(unsafe.Pointer(&b[0])) & 3
	return (*uint32)(unsafe.Add(unsafe.Pointer(&b[0]), -int(off))), uint(off) * 8
}

// load16 atomically loads the little-endian u16 at b[0:2] (b aliases guest memory).
func load16(b []byte) uint16 {
	if uintptr(unsafe.Pointer(&b[0]))&1 != 0 {
		// Misaligned: the guest broke the ring alignment rules; a plain load is all
		// it deserves (queue setup refuses this for the rings we validate).
		return binary.LittleEndian.Uint16(b)
	}
	w, sh := wordOf(b)
	return uint16(atomic.LoadUint32(w) >> sh)
}

// store16 atomically stores v as the little-endian u16 at b[0:2] and acts as a full
// barrier: later loads are not performed before the store is visible.
func store16(b []byte, v uint16) {
	if uintptr(unsafe.Pointer(&b[0]))&1 != 0 {
		binary.LittleEndian.PutUint16(b, v)
		fence()
		return
	}
	w, sh := wordOf(b)
	mask := uint32(0xffff) << sh
	for {
		old := atomic.LoadUint32(w)
		if atomic.CompareAndSwapUint32(w, old, old&^mask|uint32(v)<<sh) {
			return
		}
	}
}

var fenceWord uint32

// fence is a full memory barrier (a locked instruction).
func fence() { atomic.AddUint32(&fenceWord, 0) }

// LoadLE16 atomically loads a u16 ring index shared with the other side (for
// driver-side code such as test drivers; the device uses it internally).
func LoadLE16(b []byte) uint16 { return load16(b) }

// StoreLE16 atomically stores a u16 ring index with a full barrier.
func StoreLE16(b []byte, v uint16) { store16(b, v) }
