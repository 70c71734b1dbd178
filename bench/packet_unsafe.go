package bench

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgs is a recvmmsg/sendmmsg batch: one message header and one iovec per frame.
type mmsgs struct {
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec
}

func newMmsgs(n int) *mmsgs {
	return &mmsgs{hdrs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n)}
}

// set points the first len(bufs) messages at bufs (one buffer each) and returns how
// many it set (at most the batch size; empty buffers end the batch).
func (m *mmsgs) set(bufs [][]byte) int {
	n := min(len(bufs), len(m.hdrs))
	for i := range n {
		if len(bufs[i]) == 0 {
			return i
		}
		m.iovs[i].Base = &bufs[i][0]
		m.iovs[i].SetLen(len(bufs[i]))
		m.hdrs[i] = unix.Mmsghdr{}
		m.hdrs[i].Hdr.Iov = &m.iovs[i]
		m.hdrs[i].Hdr.SetIovlen(1)
	}
	return n
}

// mmsg runs recvmmsg or sendmmsg (trap) on the first n messages.
func (m *mmsgs) mmsg(trap uintptr, fd, n, flags int) (int, error) {
	if n == 0 {
		return 0, nil
	}
	r, _, e := unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&m.hdrs[0])), uintptr(n), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
