package vale

import (
	"sync/atomic"
	"unsafe"
)

// poke32 atomically stores v at mem[off:off+4] (aligned): a test playing a peer that
// shares a port's region writes ring indices the way the kernel side reads them.
func poke32(mem []byte, off uint64, v uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&mem[off])), v)
}
