package ptmemdev

import (
	"sync/atomic"
	"unsafe"
)

// storeQword publishes v at b[0:8] (8-byte aligned guest RAM) in one store, so the
// guest never sees a torn credit value.
func storeQword(b []byte, v uint64) {
	if len(b) < 8 || uintptr(unsafe.Pointer(&b[0]))%8 != 0 {
		panic("storeQword: not an aligned qword")
	}
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&b[0])), v)
}
