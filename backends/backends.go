package backends

import "errors"

// ErrGone is returned (wrapped) by a Port whose backend went away for good: a TAP
// interface deleted under an open queue, a peer process that closed its end. A
// device stops using such a port instead of retrying.
var ErrGone = errors.New("backend is gone")

// Port is a frame endpoint that a device or the switch exchanges Ethernet frames with.
// Frames may carry a virtio-net header prefix when the port was configured so.
//
// Concurrency: one goroutine may call Send while another calls Recv; calls of the same
// method must not overlap. Close may be called once, after both have returned.
type Port interface {
	// Name is the port's name as given by the user (e.g. "vale0:1", "tap0").
	Name() string
	// Send offers frames; it returns how many were taken, in order. The rest are the
	// caller's to drop or retry and count. Send never blocks waiting for room.
	Send(frames [][]byte) (int, error)
	// Recv copies up to len(bufs) pending frames into bufs, setting lens[i] to the
	// length stored in bufs[i]; it never blocks. A frame longer than its buffer is
	// truncated (the backend counts it).
	Recv(bufs [][]byte, lens []int) (int, error)
	// ReadyFD is a file descriptor that becomes readable when Recv may return frames,
	// or -1 when the caller must poll.
	ReadyFD() int
	// Close releases the port.
	Close() error
}
