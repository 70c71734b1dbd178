package bench

import (
	"sync/atomic"
	"unsafe"
)

// storeQword stores v into the 8 bytes of b (guest memory a micro guest polls) as
// one atomic store, so the guest never sees a torn value. b must be 8-byte aligned
// and hold 8 bytes; anything else is ignored (the callers pass fixed addresses).
func storeQword(b []byte, v uint64) {
	if len(b) < 8 || uintptr(unsafe.Pointer(&b[0]))%8 != 0 {
		return
	}
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&b[0])), v)
}

// loadQword loads the 8 bytes of b (guest memory a micro guest stores) as one
// atomic load; 0 if b is not an aligned qword (the callers pass fixed addresses).
func loadQword(b []byte) uint64 {
	if len(b) < 8 || uintptr(unsafe.Pointer(&b[0]))%8 != 0 {
		return 0
	}
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(&b[0])))
}
