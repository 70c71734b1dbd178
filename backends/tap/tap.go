package tap

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
)

// Offload flags for SetOffload (TUN_F_* in linux/if_tun.h): what the host may hand
// the guest (partially checksummed or GSO frames).
const (
	OffloadCsum   = 0x01
	OffloadTSO4   = 0x02
	OffloadTSO6   = 0x04
	OffloadTSOECN = 0x08
	OffloadUFO    = 0x10
)

const tunPath = "/dev/net/tun"

// ErrGone is backends.ErrGone, returned (wrapped) once the interface was deleted
// under an open queue (ip link del): the kernel then fails every read and write
// with EBADFD.
var ErrGone = backends.ErrGone

// Options open a TAP.
type Options struct {
	Name string
	// Queues > 1 opens that many queues with IFF_MULTI_QUEUE (one fd each).
	Queues int
	// VnetHdr prefixes every frame with a virtio-net header (IFF_VNET_HDR); its size
	// is 10 until SetVnetHdrSize changes it.
	VnetHdr bool
	// NoCreate refuses to create an interface that does not exist.
	NoCreate bool
}

// Tap is an open TAP interface with one or more queues.
//
// Concurrency: each Queue may be used by its own goroutine; Tap methods that change
// settings (SetVnetHdrSize, SetOffload) must not race with Close.
type Tap struct {
	name    string
	queues  []*Queue
	created bool
}

// Exists reports whether a network interface called name exists.
func Exists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

// Open opens (or creates, when it does not exist and the caller may) the TAP
// interface opt.Name. An interface Open created disappears when the Tap is closed.
func Open(opt Options) (*Tap, error) {
	if opt.Name == "" || len(opt.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap: bad interface name %q (1..%d characters)", opt.Name, unix.IFNAMSIZ-1)
	}
	if opt.Queues < 1 {
		opt.Queues = 1
	}
	existed := Exists(opt.Name)
	if !existed && opt.NoCreate {
		return nil, fmt.Errorf("tap: %s does not exist; create it with `ip tuntap add %s mode tap`", opt.Name, opt.Name)
	}
	t := &Tap{name: opt.Name, created: !existed}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if opt.VnetHdr {
		flags |= unix.IFF_VNET_HDR
	}
	if opt.Queues > 1 {
		flags |= unix.IFF_MULTI_QUEUE
	}
	for i := 0; i < opt.Queues; i++ {
		fd, err := unix.Open(tunPath, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("tap: open %s: %w (is the tun module loaded?)", tunPath, err)
		}
		ifr, err := unix.NewIfreq(opt.Name)
		if err != nil {
			unix.Close(fd)
			t.Close()
			return nil, fmt.Errorf("tap: %s: %w", opt.Name, err)
		}
		ifr.SetUint16(flags)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			t.Close()
			return nil, fmt.Errorf("tap: attach %s queue %d: %w%s", opt.Name, i, err, hint(err, existed, opt.Name))
		}
		t.queues = append(t.queues, &Queue{tap: t, fd: fd, index: i})
	}
	if t.created {
		if err := setUp(opt.Name); err != nil {
			t.Close()
			return nil, err
		}
	}
	return t, nil
}

func hint(err error, existed bool, name string) string {
	switch {
	case errors.Is(err, unix.EPERM) && !existed:
		return fmt.Sprintf(" (creating a TAP needs CAP_NET_ADMIN: run as root or create it first with `ip tuntap add %s mode tap user $USER`)", name)
	case errors.Is(err, unix.EPERM):
		return fmt.Sprintf(" (the TAP belongs to another user: `ip tuntap add %s mode tap user $USER`)", name)
	case errors.Is(err, unix.EINVAL) && existed:
		return fmt.Sprintf(" (%s exists with other flags, e.g. not multi-queue, or is not a TAP)", name)
	case errors.Is(err, unix.EBUSY):
		return " (another process holds this TAP)"
	}
	return ""
}

// setUp brings the interface up (IFF_UP), as a freshly created TAP is down.
func setUp(name string) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tap: bring %s up: %w", name, err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("tap: bring %s up: %w", name, err)
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("tap: bring %s up: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("tap: bring %s up: %w", name, err)
	}
	return nil
}

// SetMTU sets the interface MTU (SIOCSIFMTU).
func (t *Tap) SetMTU(mtu int) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tap: set %s MTU: %w", t.name, err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(t.name)
	if err != nil {
		return fmt.Errorf("tap: set %s MTU: %w", t.name, err)
	}
	ifr.SetUint32(uint32(mtu))
	if err := unix.IoctlIfreq(s, unix.SIOCSIFMTU, ifr); err != nil {
		return fmt.Errorf("tap: set %s MTU %d: %w", t.name, mtu, err)
	}
	return nil
}

// Name is the interface name.
func (t *Tap) Name() string { return t.name }

// Created reports whether Open created the interface (it goes away on Close).
func (t *Tap) Created() bool { return t.created }

// NumQueues is the number of open queues.
func (t *Tap) NumQueues() int { return len(t.queues) }

// Queue returns queue i.
func (t *Tap) Queue(i int) *Queue { return t.queues[i] }

// SetVnetHdrSize sets the virtio-net header size on every queue (10 legacy, 12 with
// MRG_RXBUF or VERSION_1), so guest headers pass through unchanged.
func (t *Tap) SetVnetHdrSize(n int) error {
	for _, q := range t.queues {
		if err := unix.IoctlSetPointerInt(q.fd, unix.TUNSETVNETHDRSZ, n); err != nil {
			return fmt.Errorf("tap %s: set vnet header size %d: %w", t.name, n, err)
		}
	}
	return nil
}

// SetOffload tells the kernel which offloaded frames (Offload* flags) it may hand us.
func (t *Tap) SetOffload(flags int) error {
	for _, q := range t.queues {
		if err := unix.IoctlSetInt(q.fd, unix.TUNSETOFFLOAD, flags); err != nil {
			return fmt.Errorf("tap %s: set offload %#x: %w", t.name, flags, err)
		}
	}
	return nil
}

// Close closes every queue.
func (t *Tap) Close() error {
	var err error
	for _, q := range t.queues {
		err = errors.Join(err, q.Close())
	}
	return err
}

// Queue is one TAP queue (one fd). It implements backends.Port.
//
// Concurrency: one goroutine may read while another writes.
type Queue struct {
	tap    *Tap
	fd     int
	index  int
	closed atomic.Bool
	rdIov  []unix.Iovec // reader's iovec scratch
	wrIov  []unix.Iovec // writer's iovec scratch
	// Truncated counts frames longer than the buffer Recv or Readv offered.
	Truncated atomic.Uint64
}

// Name is the interface name with the queue index.
func (q *Queue) Name() string { return fmt.Sprintf("%s/%d", q.tap.name, q.index) }

// FD is the queue's non-blocking file descriptor.
func (q *Queue) FD() int { return q.fd }

// ReadyFD is the descriptor that becomes readable when frames are pending.
func (q *Queue) ReadyFD() int { return q.fd }

func wrap(op string, q *Queue, err error) error {
	if errors.Is(err, unix.EBADFD) || errors.Is(err, unix.EIO) {
		return fmt.Errorf("tap %s: %s: %w (%w)", q.Name(), op, ErrGone, err)
	}
	return fmt.Errorf("tap %s: %s: %w", q.Name(), op, err)
}

// Readv reads one frame scattered over iovs (typically guest buffers: no copy). It
// returns 0, nil when nothing is pending.
func (q *Queue) Readv(iovs [][]byte) (int, error) {
	return q.vector(unix.SYS_READV, "read", &q.rdIov, iovs)
}

// Writev writes one frame gathered from iovs. A full device queue (EAGAIN) drops
// the frame (returns 0, nil), as a NIC does.
func (q *Queue) Writev(iovs [][]byte) (int, error) {
	return q.vector(unix.SYS_WRITEV, "write", &q.wrIov, iovs)
}

// vector runs readv or writev on iovs through the caller's iovec scratch,
// retrying on EINTR; EAGAIN is 0, nil.
func (q *Queue) vector(trap uintptr, op string, scratch *[]unix.Iovec, iovs [][]byte) (int, error) {
	*scratch = iovecs(*scratch, iovs)
	for {
		n, err := rwv(trap, q.fd, *scratch)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, nil
		case err != nil:
			return 0, wrap(op, q, err)
		}
		return n, nil
	}
}

// Send writes frames, one write each; it stops at the first frame the kernel would
// not take without blocking.
func (q *Queue) Send(frames [][]byte) (int, error) {
	for i, f := range frames {
		for {
			_, err := unix.Write(q.fd, f)
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				return i, nil
			}
			if err != nil {
				return i, wrap("write", q, err)
			}
			break
		}
	}
	return len(frames), nil
}

// Recv reads up to len(bufs) pending frames without blocking.
func (q *Queue) Recv(bufs [][]byte, lens []int) (int, error) {
	for i := range bufs {
		n, err := q.read(bufs[i])
		if err != nil {
			return i, err
		}
		if n < 0 {
			return i, nil
		}
		lens[i] = n
	}
	return len(bufs), nil
}

// read reads one frame; -1 means nothing pending.
func (q *Queue) read(b []byte) (int, error) {
	for {
		n, err := unix.Read(q.fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return -1, nil
		case err != nil:
			return 0, wrap("read", q, err)
		}
		return n, nil
	}
}

// Close closes the queue's descriptor (once).
func (q *Queue) Close() error {
	if q.closed.Swap(true) {
		return nil
	}
	return unix.Close(q.fd)
}

// CanCreate reports whether this process may create TAP interfaces (root or
// CAP_NET_ADMIN and /dev/net/tun present), with a reason when it may not.
func CanCreate() (bool, string) {
	if _, err := os.Stat(tunPath); err != nil {
		return false, tunPath + " is missing (modprobe tun)"
	}
	var hdr unix.CapUserHeader
	var data [2]unix.CapUserData
	hdr.Version = unix.LINUX_CAPABILITY_VERSION_3
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false, "capget: " + err.Error()
	}
	if data[0].Effective&(1<<unix.CAP_NET_ADMIN) == 0 {
		return false, "CAP_NET_ADMIN is missing (run as root)"
	}
	return true, ""
}
