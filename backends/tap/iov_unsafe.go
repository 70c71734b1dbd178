package tap

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// iovecs fills v (grown as needed) with bufs and returns it; zero-length buffers are
// kept (the kernel skips them). Reusing v avoids an allocation per frame, which
// unix.Readv/Writev would make.
func iovecs(v []unix.Iovec, bufs [][]byte) []unix.Iovec {
	v = v[:0]
	for _, b := range bufs {
		var iov unix.Iovec
		if len(b) > 0 {
			iov.Base = &b[0]
			iov.SetLen(len(b))
		}
		v = append(v, iov)
	}
	return v
}

// rwv runs readv or writev (trap) on fd with the prepared iovecs.
func rwv(trap uintptr, fd int, v []unix.Iovec) (int, error) {
	if len(v) == 0 {
		return 0, nil
	}
	n, _, e := unix.Syscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&v[0])), uintptr(len(v)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
