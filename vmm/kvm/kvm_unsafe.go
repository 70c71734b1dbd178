package kvm

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues a request on fd with a scalar argument.
//
// Every helper here retries EINTR except for KVM_RUN, whose EINTR is how a vCPU is
// stopped: slow requests (KVM_CREATE_VM on a loaded host) are otherwise interrupted
// by the Go runtime's preemption signal.
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if errno == unix.EINTR && req != kvmRun {
			continue
		}
		if errno != 0 {
			return r, errno
		}
		return r, nil
	}
}

// ioctlPtr issues a request whose argument is a pointer to *p. T must have the exact
// layout of the kernel structure the request names.
func ioctlPtr[T any](fd int, req uintptr, p *T) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(p)))
		runtime.KeepAlive(p)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return r, errno
		}
		return r, nil
	}
}

// ioctlBytes issues a request whose argument points at an encoded structure in b.
func ioctlBytes(fd int, req uintptr, b []byte) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(unsafe.SliceData(b))))
		runtime.KeepAlive(b)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return r, errno
		}
		return r, nil
	}
}

// ioctl issues a request on the VM fd with a scalar argument (helper for irq.go).
func (v *VM) ioctl(req, arg uintptr) (uintptr, error) {
	return ioctl(v.fd, req, arg)
}

// hostAddr is the userspace address of the first byte of b (for memory slots).
func hostAddr(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}
