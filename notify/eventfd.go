package notify

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// EventFD is a Linux eventfd in counter mode, non-blocking and close-on-exec.
//
// Concurrency: Signal, Add and Read may be called from any goroutine; the kernel
// serialises the counter. Close must not race with other calls.
type EventFD struct {
	fd int
}

// NewEventFD creates an eventfd with counter 0.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("notify: eventfd: %w", err)
	}
	return &EventFD{fd: fd}, nil
}

// FD is the file descriptor, for handing to KVM or epoll. It stays owned by e.
func (e *EventFD) FD() int { return e.fd }

// Signal adds 1 to the counter.
func (e *EventFD) Signal() error { return e.Add(1) }

// Add adds n (1 <= n < 2^64-1) to the counter. A full counter returns an error
// wrapping unix.EAGAIN rather than blocking.
func (e *EventFD) Add(n uint64) error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], n)
	for {
		_, err := unix.Write(e.fd, b[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("notify: eventfd write: %w", err)
		}
		return nil
	}
}

// Read returns the counter and resets it to zero; 0 when nothing was signalled.
func (e *EventFD) Read() (uint64, error) {
	var b [8]byte
	for {
		_, err := unix.Read(e.fd, b[:])
		if err == unix.EINTR {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return 0, nil
		}
		if err != nil {
			return 0, fmt.Errorf("notify: eventfd read: %w", err)
		}
		return binary.NativeEndian.Uint64(b[:]), nil
	}
}

// Close closes the descriptor. Any KVM binding using it must be removed first.
func (e *EventFD) Close() error {
	if e.fd < 0 {
		return nil
	}
	err := unix.Close(e.fd)
	e.fd = -1
	return err
}
