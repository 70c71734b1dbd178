// Package seqpacket is a backends.Port over a SOCK_SEQPACKET socket: every message
// is one Ethernet frame (with a virtio-net header in front when both ends agree on
// one). It connects a NIC to another process or to a test holding the peer end,
// as QEMU's socket netdev does, without a TAP or root.
//
// Concurrency: as backends.Port says, one Send (or Writev) and one Recv (or Readv)
// may run at once; Close must not race with either.
package seqpacket

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Port is one end of a SOCK_SEQPACKET socket. Use New or Pair.
type Port struct {
	fd   int
	name string
}

// New wraps fd, a non-blocking SOCK_SEQPACKET socket; the Port owns it.
func New(fd int, name string) *Port { return &Port{fd: fd, name: name} }

// Pair makes a connected socketpair and returns a Port on one end and the other
// end's file descriptor (non-blocking, close-on-exec), which the caller owns.
func Pair(name string) (*Port, int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, -1, fmt.Errorf("seqpacket: socketpair: %w", err)
	}
	return New(fds[0], name), fds[1], nil
}

// Name is the name given to New.
func (p *Port) Name() string { return p.name }

// ReadyFD is the socket: readable when a frame is pending.
func (p *Port) ReadyFD() int { return p.fd }

// Close closes the socket.
func (p *Port) Close() error { return unix.Close(p.fd) }

// Send writes one message per frame and stops at the first the socket does not
// take (EAGAIN: the rest are the caller's to drop).
func (p *Port) Send(frames [][]byte) (int, error) {
	for i, f := range frames {
		if _, err := unix.Write(p.fd, f); err != nil {
			if err == unix.EAGAIN {
				return i, nil
			}
			return i, fmt.Errorf("seqpacket: send on %s: %w", p.name, err)
		}
	}
	return len(frames), nil
}

// Recv reads pending frames into bufs (a longer frame is cut to its buffer, as the
// socket truncates it); it never blocks.
func (p *Port) Recv(bufs [][]byte, lens []int) (int, error) {
	for i := range bufs {
		n, err := unix.Read(p.fd, bufs[i])
		if err == unix.EAGAIN {
			return i, nil
		}
		if err != nil {
			return i, fmt.Errorf("seqpacket: receive on %s: %w", p.name, err)
		}
		lens[i] = n
	}
	return len(bufs), nil
}

// Readv reads one frame scattered over iovs (0, nil when none is pending).
func (p *Port) Readv(iovs [][]byte) (int, error) {
	n, err := unix.Readv(p.fd, iovs)
	if err == unix.EAGAIN {
		return 0, nil
	}
	if err != nil {
		return n, fmt.Errorf("seqpacket: receive on %s: %w", p.name, err)
	}
	return n, nil
}

// Writev writes one frame gathered from iovs (0, nil when the socket is full:
// the frame is dropped, as a NIC drops it).
func (p *Port) Writev(iovs [][]byte) (int, error) {
	n, err := unix.Writev(p.fd, iovs)
	if err == unix.EAGAIN {
		return 0, nil
	}
	if err != nil {
		return n, fmt.Errorf("seqpacket: send on %s: %w", p.name, err)
	}
	return n, nil
}
