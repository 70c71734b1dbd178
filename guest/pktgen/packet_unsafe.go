package pktgen

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgBatch is one sendmmsg or recvmmsg batch: a message header per frame and an
// iovec per buffer. The iovecs point into the port's netmap region (an mmap, not Go
// memory), so the kernel reads and writes the slots' buffers in place.
//
// Concurrency: one goroutine (the ring's sync) at a time.
type mmsgBatch struct {
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec
	n    int // messages set
	k    int // iovecs used
}

func newMmsgBatch(msgs, iovs int) *mmsgBatch {
	return &mmsgBatch{hdrs: make([]unix.Mmsghdr, msgs), iovs: make([]unix.Iovec, iovs)}
}

func (m *mmsgBatch) reset() { m.n, m.k = 0, 0 }

// add appends one message made of bufs (none empty); false when the batch has no
// room for it, or a buffer is empty.
func (m *mmsgBatch) add(bufs ...[]byte) bool {
	if m.n == len(m.hdrs) || m.k+len(bufs) > len(m.iovs) || len(bufs) == 0 {
		return false
	}
	for _, b := range bufs {
		if len(b) == 0 {
			return false
		}
	}
	first := m.k
	for _, b := range bufs {
		m.iovs[m.k].Base = &b[0]
		m.iovs[m.k].SetLen(len(b))
		m.k++
	}
	m.hdrs[m.n] = unix.Mmsghdr{}
	m.hdrs[m.n].Hdr.Iov = &m.iovs[first]
	m.hdrs[m.n].Hdr.SetIovlen(len(bufs))
	m.n++
	return true
}

// msgLen is the byte count the kernel reported for message i (received or sent).
func (m *mmsgBatch) msgLen(i int) int { return int(m.hdrs[i].Len) }

// truncated says message i did not fit its buffers (MSG_TRUNC).
func (m *mmsgBatch) truncated(i int) bool { return m.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 }

// call runs recvmmsg or sendmmsg (trap) on the messages set; it returns how many the
// kernel took or filled.
func (m *mmsgBatch) call(trap uintptr, fd, flags int) (int, error) {
	if m.n == 0 {
		return 0, nil
	}
	r, _, e := unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&m.hdrs[0])), uintptr(m.n), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
