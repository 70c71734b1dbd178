//go:build linux

package ptnet

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmioWrite32 is one plain 32-bit store to a device register. Not an atomic
// exchange: on x86 that is a locked read-modify-write, and the read would
// reach the device (an exit to the VMM) while the write alone is caught by
// an ioeventfd. noinline keeps the compiler from dropping or merging it.
//
//go:noinline
func mmioWrite32(regs []byte, off uint32, v uint32) {
	_ = regs[off+3]
	*(*uint32)(unsafe.Pointer(&regs[off])) = v
}

// mmioRead32 is one plain 32-bit load from a device register.
//
//go:noinline
func mmioRead32(regs []byte, off uint32) uint32 {
	_ = regs[off+3]
	return *(*uint32)(unsafe.Pointer(&regs[off]))
}

// ioctlBuf is ioctl(fd, req, buf): the kernel reads and writes buf in place.
func ioctlBuf(fd int, req uint32, buf []byte) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&buf[0])))
	if e != 0 {
		return e
	}
	return nil
}
