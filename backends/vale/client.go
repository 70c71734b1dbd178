package vale

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/notify"
)

// ErrServiceGone is returned (wrapped) by every request once the connection to the
// switch service ended (the service stopped, or closed the connection).
var ErrServiceGone = errors.New("switch service connection lost")

// DefaultCallTimeout bounds one request's round trip.
const DefaultCallTimeout = 10 * time.Second

// ServiceError is an error reply of the service: the request, a Linux errno
// (errors.Is(err, unix.ENOENT) works) and the service's message.
type ServiceError struct {
	Op    MsgType
	Errno unix.Errno
	Msg   string
}

func (e *ServiceError) Error() string { return fmt.Sprintf("switch service: %v: %s", e.Op, e.Msg) }
func (e *ServiceError) Unwrap() error { return e.Errno }

// Client is a connection to a switch service (`vmrun switch`).
//
// Concurrency: all methods may be called from any goroutine; requests are
// serialised (one round trip at a time). A goroutine reads the socket, so the
// end of the service is noticed at once (Done, OnDown) even between requests.
type Client struct {
	c       *net.UnixConn
	path    string
	info    HelloReply
	timeout time.Duration

	callMu  sync.Mutex
	seq     uint32
	replies chan clientReply
	done    chan struct{}

	mu     sync.Mutex
	err    error
	onDown []func(error)
}

type clientReply struct {
	h       Header
	payload []byte
	fds     []int
}

// Dial connects to the service at path ("" = DefaultSocketPath()) and checks its
// protocol version.
func Dial(path string) (*Client, error) {
	if path == "" {
		path = DefaultSocketPath()
	}
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) {
			return nil, fmt.Errorf("vale: no switch service at %s (start one with `vmrun switch -socket %s`): %w", path, path, err)
		}
		return nil, fmt.Errorf("vale: connect to switch service %s: %w", path, err)
	}
	c := &Client{c: conn, path: path, timeout: DefaultCallTimeout,
		replies: make(chan clientReply, 2), done: make(chan struct{})}
	go c.read()
	p, _, err := c.call(HelloReq{Version: ProtoVersion}, nil, 0)
	if err == nil {
		c.info, err = ParseHelloReply(p)
	}
	if err == nil && c.info.Version != ProtoVersion {
		err = fmt.Errorf("vale: switch service %s speaks version %d, we speak %d", path, c.info.Version, ProtoVersion)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Path is the service's socket path.
func (c *Client) Path() string { return c.path }

// ServicePID is the service's process id.
func (c *Client) ServicePID() uint32 { return c.info.PID }

// SetTimeout changes the bound on one request's round trip (DefaultCallTimeout).
func (c *Client) SetTimeout(d time.Duration) {
	c.callMu.Lock()
	c.timeout = d
	c.callMu.Unlock()
}

// Done is closed when the connection ended; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is nil while the connection lives, then why it ended (wrapping ErrServiceGone).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// OnDown registers fn to run once, from the reading goroutine, when the connection
// ends (at once if it already has). The ports of the connection are gone from the
// service then: their host loops stopped.
func (c *Client) OnDown(fn func(error)) {
	c.mu.Lock()
	if c.err == nil {
		c.onDown = append(c.onDown, fn)
		c.mu.Unlock()
		return
	}
	err := c.err
	c.mu.Unlock()
	fn(err)
}

// Close ends the connection: the service detaches every port it attached.
func (c *Client) Close() error {
	err := c.c.Close()
	<-c.done
	for {
		select {
		case r := <-c.replies:
			closeFDs(r.fds)
			continue
		default:
		}
		break
	}
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (c *Client) read() {
	buf := make([]byte, HeaderSize+MaxPayload+1)
	oob := make([]byte, unix.CmsgSpace(4*MaxFDs))
	var err error
	for {
		var pkt []byte
		var fds []int
		pkt, fds, err = recvMsg(c.c, buf, oob)
		if errors.Is(err, ErrProto) {
			continue // a reply we could not read whole: its caller times out
		}
		if err != nil {
			break
		}
		h, payload, perr := ParseMessage(pkt)
		if perr != nil || h.Flags&FlagReply == 0 {
			closeFDs(fds)
			continue
		}
		r := clientReply{h: h, payload: append([]byte(nil), payload...), fds: fds}
		select {
		case c.replies <- r:
		default:
			closeFDs(fds) // nobody waits for it (a caller timed out)
		}
	}
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("vale: switch service %s closed the connection: %w", c.path, ErrServiceGone)
	} else {
		err = fmt.Errorf("vale: switch service %s: %v: %w", c.path, err, ErrServiceGone)
	}
	c.mu.Lock()
	c.err = err
	fns := c.onDown
	c.onDown = nil
	c.mu.Unlock()
	close(c.done) // replies already queued stay for their caller (Close drops them)
	for _, fn := range fns {
		fn(err)
	}
}

// call sends req with fds and returns the reply's payload and descriptors (the
// caller owns them), after checking the reply carries wantFDs descriptors.
func (c *Client) call(req Request, fds []int, wantFDs int) ([]byte, []int, error) {
	c.callMu.Lock()
	defer c.callMu.Unlock()
	if err := c.Err(); err != nil {
		return nil, nil, err
	}
	c.seq++
	if c.seq == 0 {
		c.seq = 1 // seq 0 is the service's "could not read your request"
	}
	seq := c.seq
	if err := sendMsg(c.c, AppendMessage(nil, req.Type(), 0, seq, req.Encode()), fds); err != nil {
		if e := c.Err(); e != nil {
			return nil, nil, e
		}
		return nil, nil, err
	}
	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	for {
		var r clientReply
		select {
		case r = <-c.replies:
		case <-c.done:
			// A reply that came just before the end is still the answer.
			select {
			case r = <-c.replies:
			default:
				return nil, nil, c.Err()
			}
		case <-timer.C:
			return nil, nil, fmt.Errorf("vale: switch service %s: %v: no reply within %v", c.path, req.Type(), c.timeout)
		}
		if p, fds, err, ok := c.match(r, req.Type(), seq, wantFDs); ok {
			return p, fds, err
		}
	}
}

// match checks reply r against the request in flight; ok is false for a late
// reply to an earlier request (dropped).
func (c *Client) match(r clientReply, t MsgType, seq uint32, wantFDs int) (payload []byte, fds []int, err error, ok bool) {
	connErr := r.h.Seq == 0 && r.h.Flags&FlagError != 0
	if r.h.Seq != seq && !connErr {
		closeFDs(r.fds) // a late reply to a request that timed out
		return nil, nil, nil, false
	}
	if r.h.Flags&FlagError != 0 {
		closeFDs(r.fds)
		er, err := ParseErrorReply(r.payload)
		if err != nil {
			return nil, nil, err, true
		}
		return nil, nil, &ServiceError{Op: t, Errno: unix.Errno(er.Errno), Msg: er.Msg}, true
	}
	if r.h.Type != t {
		closeFDs(r.fds)
		return nil, nil, protoErr("reply of type %v to %v", r.h.Type, t), true
	}
	if len(r.fds) != wantFDs {
		closeFDs(r.fds)
		return nil, nil, protoErr("%v reply with %d descriptors, want %d", t, len(r.fds), wantFDs), true
	}
	return r.payload, r.fds, nil, true
}

// List returns every port of the service with its counters.
func (c *Client) List() ([]ListEntry, error) {
	var out []ListEntry
	for start := uint32(0); ; {
		p, _, err := c.call(ListReq{Start: start}, nil, 0)
		if err != nil {
			return nil, err
		}
		r, err := ParseListReply(p)
		if err != nil {
			return nil, err
		}
		out = append(out, r.Entries...)
		if r.Next >= r.Total || r.Next <= start || len(out) > MaxSwitches*MaxPorts+1<<16 {
			return out, nil
		}
		start = r.Next
	}
}

// AttachTap joins host interface tapName to switch sw in the service (vale-ctl -a).
func (c *Client) AttachTap(sw, tapName string) error {
	if err := CheckSwitchName(sw); err != nil {
		return err
	}
	if err := CheckTapName(tapName); err != nil {
		return err
	}
	_, _, err := c.call(TapAttachReq(sw, tapName), nil, 0)
	return err
}

// DetachTap removes a TAP the service joined to sw.
func (c *Client) DetachTap(sw, tapName string) error {
	if err := CheckSwitchName(sw); err != nil {
		return err
	}
	if err := CheckTapName(tapName); err != nil {
		return err
	}
	_, _, err := c.call(TapDetachReq(sw, tapName), nil, 0)
	return err
}

// Capture starts recording port "valeX:Y" into f (a file or FIFO open for
// writing; the service writes through its own copy of the descriptor). stop ends it
// and reports the packets written and those dropped because the file did not keep
// up. The capture also ends with the connection.
func (c *Client) Capture(port string, dir Direction, f *os.File, snaplen int) (stop func() (packets, dropped uint64, err error), err error) {
	if snaplen < 0 {
		return nil, fmt.Errorf("vale: capture: snaplen %d", snaplen)
	}
	p, _, err := c.call(CaptureReq{Name: port, Dir: uint32(dir), SnapLen: uint32(snaplen)}, []int{int(f.Fd())}, 0)
	if err != nil {
		return nil, err
	}
	r, err := ParseCaptureReply(p)
	if err != nil {
		return nil, err
	}
	return func() (uint64, uint64, error) {
		p, _, err := c.call(CaptureStopReq(r), nil, 0)
		if err != nil {
			return 0, 0, err
		}
		s, err := ParseCaptureStopReply(p)
		return s.Packets, s.Dropped, err
	}, nil
}

// RemotePort is a port attached in the service: its region memfd and geometry.
// Start runs its host loop in the service over a CSB and eventfds of the client's.
//
// Concurrency: methods may be called from any goroutine; Detach once.
type RemotePort struct {
	c    *Client
	name string
	info AttachReply

	mu       sync.Mutex
	fd       int
	detached bool
}

// Attach attaches port name ("valeX:Y" or "name{N" / "name}N", with @conf: options)
// in the service. Non-zero ring and slot counts of cfg apply where the name gives
// none. The returned port holds the region's memfd.
func (c *Client) Attach(name string, cfg netmap.PortConfig) (*RemotePort, error) {
	if len(name) >= NameSize {
		return nil, fmt.Errorf("vale: port name %q longer than %d bytes", name, NameSize-1)
	}
	req := AttachReq{Name: name, TxRings: uint32(max(cfg.TxRings, 0)), RxRings: uint32(max(cfg.RxRings, 0)),
		TxSlots: uint32(max(cfg.TxSlots, 0)), RxSlots: uint32(max(cfg.RxSlots, 0))}
	p, fds, err := c.call(req, nil, 1)
	if err != nil {
		return nil, fmt.Errorf("vale: attach %s: %w", name, err)
	}
	rp := &RemotePort{c: c, name: name, fd: fds[0]}
	if rp.info, err = ParseAttachReply(p); err == nil {
		var st unix.Stat_t
		if err = unix.Fstat(rp.fd, &st); err == nil && uint64(st.Size) < rp.info.MapSize {
			err = fmt.Errorf("vale: attach %s: region memfd of %d bytes, the service says %d", name, st.Size, rp.info.MapSize)
		}
	}
	if err != nil {
		if rp.info.Port != 0 {
			_, _, _ = c.call(DetachReq(rp.info.Port), nil, 0)
		}
		unix.Close(rp.fd)
		return nil, err
	}
	return rp, nil
}

// Name is the name the port was attached with.
func (p *RemotePort) Name() string { return p.name }

// Info is the port's geometry and region as the service reported them.
func (p *RemotePort) Info() AttachReply { return p.info }

// FD is the region memfd (valid until Detach).
func (p *RemotePort) FD() int { return p.fd }

// NumRings is TX plus RX rings: the CSB entries, kicks and interrupts the loop needs.
func (p *RemotePort) NumRings() int { return int(p.info.TxRings + p.info.RxRings) }

// CSBRef places one CSB array: at Off in the memfd FD (which must be sealed with
// F_SEAL_SHRINK).
type CSBRef struct {
	FD  int
	Off uint64
}

// Start asks the service to write the CSB from the rings' state and to run the
// port's host loop on it: atok and ktoa place the two arrays, kicks and irqs are
// one eventfd per ring (TX rings first). mode is notify.Block or notify.Adaptive
// (with spin). The service keeps its own copies of the descriptors.
func (p *RemotePort) Start(atok, ktoa CSBRef, kicks, irqs []*notify.EventFD, mode notify.Mode, spin time.Duration) error {
	n := p.NumRings()
	if len(kicks) != n || len(irqs) != n {
		return fmt.Errorf("vale: %s: %d kicks and %d interrupts for %d rings", p.name, len(kicks), len(irqs), n)
	}
	req := StartReq{Port: p.info.Port, Rings: uint32(n), AtokOff: atok.Off, KtoaOff: ktoa.Off, SpinUs: uint32(spin / time.Microsecond)}
	switch mode {
	case notify.Block:
	case notify.Adaptive:
		req.Mode = LoopAdaptive
	default:
		return fmt.Errorf("vale: %s: the service runs host loops in block or adaptive mode, not %v", p.name, mode)
	}
	fds := []int{atok.FD, ktoa.FD}
	for _, e := range append(append([]*notify.EventFD(nil), kicks...), irqs...) {
		if e == nil {
			return fmt.Errorf("vale: %s: nil eventfd", p.name)
		}
		fds = append(fds, e.FD())
	}
	if _, _, err := p.c.call(req, fds, 0); err != nil {
		return fmt.Errorf("vale: %s: start host loop: %w", p.name, err)
	}
	return nil
}

// MoveCSB moves a started port's CSB: the service stops the loop, rewrites the new
// CSB from the rings' state and restarts the loop with the same eventfds.
func (p *RemotePort) MoveCSB(atok, ktoa CSBRef) error {
	_, _, err := p.c.call(MoveCSBReq{Port: p.info.Port, AtokOff: atok.Off, KtoaOff: ktoa.Off}, []int{atok.FD, ktoa.FD}, 0)
	if err != nil {
		return fmt.Errorf("vale: %s: move CSB: %w", p.name, err)
	}
	return nil
}

// Stop stops the port's host loop (the port stays attached).
func (p *RemotePort) Stop() error {
	if _, _, err := p.c.call(StopReq(p.info.Port), nil, 0); err != nil {
		return fmt.Errorf("vale: %s: stop host loop: %w", p.name, err)
	}
	return nil
}

// Detach detaches the port in the service and closes the memfd. Mappings of the
// region stay valid (the memory lives until the last one goes). When the
// connection is already gone the service has detached the port itself.
func (p *RemotePort) Detach() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.detached {
		return nil
	}
	p.detached = true
	_, _, err := p.c.call(DetachReq(p.info.Port), nil, 0)
	unix.Close(p.fd)
	p.fd = -1
	if errors.Is(err, ErrServiceGone) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vale: detach %s: %w", p.name, err)
	}
	return nil
}

// HostPortConfig configures OpenHostPort. Zero values take the defaults.
type HostPortConfig struct {
	// Rings and slots where the name's @conf: gives none (0: the service's defaults).
	TxRings, RxRings, TxSlots, RxSlots int
	// Mode and Spin: how the service's host loop waits (notify.Block or Adaptive).
	Mode notify.Mode
	Spin time.Duration
	// DriverSpin is netmap.DriverConfig.Spin.
	DriverSpin time.Duration
}

// HostPort is a service port used by a host program as a netmap port: the embedded
// Driver gives the rings, slots and buffers, and txsync/rxsync (DriverRing.Sync,
// Wait) through a CSB in this process's memory, whose host loop runs in the
// service.
//
// Concurrency: as netmap.Driver; Close once, after the rings' users are done.
type HostPort struct {
	*netmap.Driver
	Port  *RemotePort
	CSB   *netmap.CSB
	Kicks []*notify.EventFD
	Irqs  []*notify.EventFD

	mem    []byte // the region, mapped
	csbMem []byte
	csbFD  int
	once   sync.Once
}

// csbPage is where the ktoa array starts in a host port's CSB memfd: the atok array
// fills page 0 and ktoa page 1, as a Linux ptnet guest lays them out.
const csbPage = 4096

// OpenHostPort attaches port name in the service and opens it as a netmap port.
func (c *Client) OpenHostPort(name string, cfg HostPortConfig) (_ *HostPort, err error) {
	rp, err := c.Attach(name, netmap.PortConfig{TxRings: cfg.TxRings, RxRings: cfg.RxRings, TxSlots: cfg.TxSlots, RxSlots: cfg.RxSlots})
	if err != nil {
		return nil, err
	}
	h := &HostPort{Port: rp, csbFD: -1}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	pg := uint64(unix.Getpagesize())
	size := (rp.info.Pools.MemSize + pg - 1) &^ (pg - 1)
	if h.mem, err = unix.Mmap(rp.fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("vale: %s: map region: %w", name, err)
	}
	h.mem = h.mem[:rp.info.Pools.MemSize]
	n := rp.NumRings()
	if h.csbFD, h.csbMem, err = newCSBMemfd(2 * csbPage); err != nil {
		return nil, fmt.Errorf("vale: %s: %w", name, err)
	}
	if h.CSB, err = netmap.NewCSB(h.csbMem[:csbPage], h.csbMem[csbPage:], n); err != nil {
		return nil, fmt.Errorf("vale: %s: %w", name, err)
	}
	for i := int(rp.info.TxRings); i < n; i++ {
		h.CSB.SetApplNeedKick(i, 1) // as ptnet's register: interrupts on RX rings at first
	}
	for i := 0; i < 2*n; i++ {
		e, err := notify.NewEventFD()
		if err != nil {
			return nil, fmt.Errorf("vale: %s: %w", name, err)
		}
		if i < n {
			h.Kicks = append(h.Kicks, e)
		} else {
			h.Irqs = append(h.Irqs, e)
		}
	}
	if err = rp.Start(CSBRef{h.csbFD, 0}, CSBRef{h.csbFD, csbPage}, h.Kicks, h.Irqs, cfg.Mode, cfg.Spin); err != nil {
		return nil, err
	}
	h.Driver, err = netmap.NewDriver(netmap.DriverConfig{Mem: h.mem, Nifp: rp.info.Nifp, CSB: h.CSB,
		Kick: netmap.EventFDKick(h.Kicks), Wait: netmap.EventFDWait(h.Irqs), Spin: cfg.DriverSpin})
	if err != nil {
		return nil, fmt.Errorf("vale: %s: %w", name, err)
	}
	return h, nil
}

// newCSBMemfd makes a memfd of size bytes sealed against shrinking and growing (the
// service refuses CSB memory that could be truncated under it) and maps it.
func newCSBMemfd(size int) (int, []byte, error) {
	fd, err := unix.MemfdCreate("ptvmm-csb", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, nil, fmt.Errorf("CSB memfd: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("CSB memfd: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("CSB memfd: seal: %w", err)
	}
	b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("CSB memfd: map: %w", err)
	}
	return fd, b, nil
}

// Name is the port's name.
func (h *HostPort) Name() string { return h.Port.name }

// CSBFD is the CSB memfd: atok at offset 0, ktoa at 4096.
func (h *HostPort) CSBFD() int { return h.csbFD }

// Close stops the host loop, detaches the port and releases the mappings and
// eventfds. Errors from a service that is gone are not reported.
func (h *HostPort) Close() error {
	var err error
	h.once.Do(func() {
		if h.Port != nil {
			if serr := h.Port.Stop(); serr != nil && !errors.Is(serr, ErrServiceGone) {
				err = serr
			}
			err = errors.Join(err, h.Port.Detach())
		}
		if h.mem != nil {
			_ = unix.Munmap(h.mem[:cap(h.mem)])
		}
		if h.csbMem != nil {
			_ = unix.Munmap(h.csbMem)
		}
		if h.csbFD >= 0 {
			unix.Close(h.csbFD)
		}
		for _, e := range append(h.Kicks, h.Irqs...) {
			e.Close()
		}
	})
	return err
}
