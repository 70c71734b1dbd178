package vale

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/notify"
)

// DefaultSocketPath is where the switch service listens unless told otherwise:
// $XDG_RUNTIME_DIR/ptvmm/switch.sock, or /run/ptvmm/switch.sock without it.
func DefaultSocketPath() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "ptvmm", "switch.sock")
	}
	return "/run/ptvmm/switch.sock"
}

// Service limits: what one peer may hold, so a runaway client cannot exhaust the
// service's memory ids or threads.
const (
	MaxConns           = 256
	MaxPortsPerConn    = 64
	MaxCapturesPerConn = 8
	// stopTimeout bounds how long tearing down a host loop may take. A loop whose
	// thread is stuck in a system call on a peer's eventfd (a peer can make its
	// eventfd blocking and drain or fill it) is abandoned after that: its CSB
	// mapping and eventfds are leaked, never unmapped under it, and the port is
	// detached anyway.
	stopTimeout  = 2 * time.Second
	connLogLines = 32 // log lines per connection (a peer cannot flood the log)
	captureQueue = 4 << 20
)

// ServiceConfig configures a Service. Zero values take the defaults.
type ServiceConfig struct {
	// Socket is the path to listen on (DefaultSocketPath() if empty). Its directory
	// is created 0700 if missing; the socket is made 0600. A socket file nobody
	// listens on any more is replaced; a live one is an error.
	Socket string
	// Registry holds the switches (a new one if nil).
	Registry *Registry
	// Logf receives connection, port and loop events (nil: silent).
	Logf func(format string, args ...any)
	// AllowUID says which peer uids may connect (SO_PEERCRED); nil: the service's
	// own uid and root.
	AllowUID func(uid uint32) bool
	// OpenTap opens host interface name for TAP_ATTACH (plain Ethernet frames, no
	// virtio-net header); nil: a TAP through backends/tap, created if missing.
	OpenTap func(name string) (backends.Port, io.Closer, error)
}

// ServiceStats are the service's counters (monotonic, except the gauges Conns,
// Ports and Loops).
type ServiceStats struct {
	Conns, Ports, Loops uint64 // open now
	Accepted, Refused   uint64 // connections (refused: credentials, limits)
	Requests, Errors    uint64 // requests served, error replies sent
	StuckLoops          uint64 // loops abandoned after stopTimeout
	DeadPeers           uint64 // connections that ended with ports still attached
}

// Service is the switch service: switches, pipes and TAP ports owned by one process
// and shared by many (`vmrun switch`). Clients attach ports over a Unix socket and
// get the port's region memfd; the service runs every port's host loop on the CSB
// and eventfds the client sends. See the package documentation for the protocol.
//
// Concurrency: Serve runs once; Close, Stats and Path may be called from any
// goroutine. Each connection is served by its own goroutine, one request at a time.
type Service struct {
	cfg  ServiceConfig
	reg  *Registry
	path string
	ln   *net.UnixListener
	pid  uint32

	pipes netmap.PipeTable

	mu     sync.Mutex
	conns  map[*svcConn]struct{}
	owned  map[*netmap.Port]*svcPort
	taps   map[*Port]*svcTap
	closed bool
	wg     sync.WaitGroup

	accepted, refused, requests, errs, stuck, deadPeers atomic.Uint64
	nports, nloops                                      atomic.Int64
}

// svcTap is a host TAP the service joined to a switch.
type svcTap struct {
	sw, name string
	pump     *BackendPort
	closer   io.Closer
}

// NewService listens on the socket; Serve then accepts connections.
func NewService(cfg ServiceConfig) (*Service, error) {
	s := &Service{cfg: cfg, reg: cfg.Registry, path: cfg.Socket, pid: uint32(os.Getpid()),
		conns: map[*svcConn]struct{}{}, owned: map[*netmap.Port]*svcPort{}, taps: map[*Port]*svcTap{}}
	if s.reg == nil {
		s.reg = NewRegistry()
	}
	if s.path == "" {
		s.path = DefaultSocketPath()
	}
	if s.cfg.AllowUID == nil {
		me := uint32(os.Getuid())
		s.cfg.AllowUID = func(uid uint32) bool { return uid == me || uid == 0 }
	}
	if s.cfg.OpenTap == nil {
		s.cfg.OpenTap = openTap
	}
	var err error
	if s.ln, err = listen(s.path); err != nil {
		return nil, err
	}
	return s, nil
}

// listen makes the socket: parent directory 0700 when created here, a stale socket
// replaced, the new one chmod 0600 (peer credentials are checked anyway).
func listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("vale: service: socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("vale: service: %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unixpacket", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("vale: service: a switch service already listens on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("vale: service: remove stale socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("vale: service: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("vale: service: chmod socket: %w", err)
	}
	return ln, nil
}

// Path is the socket path.
func (s *Service) Path() string { return s.path }

// Registry is the service's switch registry.
func (s *Service) Registry() *Registry { return s.reg }

func (s *Service) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

// Stats returns the counters.
func (s *Service) Stats() ServiceStats {
	s.mu.Lock()
	nc := len(s.conns)
	s.mu.Unlock()
	return ServiceStats{Conns: uint64(nc), Ports: uint64(s.nports.Load()), Loops: uint64(s.nloops.Load()),
		Accepted: s.accepted.Load(), Refused: s.refused.Load(), Requests: s.requests.Load(),
		Errors: s.errs.Load(), StuckLoops: s.stuck.Load(), DeadPeers: s.deadPeers.Load()}
}

// Serve accepts connections until Close. It returns nil after Close.
func (s *Service) Serve() error {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				s.logf("vale: service: accept: %v", err)
				time.Sleep(100 * time.Millisecond) // out of descriptors: let some close
				continue
			}
			return fmt.Errorf("vale: service: accept: %w", err)
		}
		s.accept(c)
	}
}

func (s *Service) accept(c *net.UnixConn) {
	cred, err := peerCred(c)
	if err != nil {
		s.refused.Add(1)
		s.logf("vale: service: peer credentials: %v", err)
		c.Close()
		return
	}
	sc := &svcConn{s: s, c: c, pid: uint32(cred.Pid), uid: cred.Uid, ports: map[uint32]*svcPort{},
		captures: map[uint32]*captureSink{}, buf: make([]byte, HeaderSize+MaxPayload+1),
		oob: make([]byte, unix.CmsgSpace(4*MaxFDs))}
	sc.logLeft.Store(connLogLines)
	refuse := func(why string) {
		s.refused.Add(1)
		s.logf("vale: service: refused pid %d uid %d: %s", cred.Pid, cred.Uid, why)
		// Answer the client's first request (its HELLO) before closing: closing
		// with a request unread would make the client see a reset, not why.
		go func() {
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			pkt, fds, err := recvMsg(c, sc.buf, sc.oob)
			closeFDs(fds)
			var h Header
			if err == nil {
				h, _, _ = ParseMessage(pkt)
			}
			_ = sc.send(h.Type, FlagReply|FlagError, h.Seq, ErrorReply{Errno: uint32(unix.EACCES), Msg: why}.Encode(), nil)
		}()
	}
	if !s.cfg.AllowUID(cred.Uid) {
		refuse(fmt.Sprintf("uid %d may not use this switch service", cred.Uid))
		return
	}
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		c.Close()
		return
	case len(s.conns) >= MaxConns:
		s.mu.Unlock()
		refuse(fmt.Sprintf("%d connections already", MaxConns))
		return
	}
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.accepted.Add(1)
	go sc.serve()
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		cred, gerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, gerr
}

// Close stops accepting, ends every connection (detaching its ports: each client's
// next request fails and its watcher sees the end), removes the TAPs, and returns
// when every connection goroutine is gone. Safe to call more than once.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	conns := make([]*svcConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	err := s.ln.Close()
	for _, c := range conns {
		c.c.Close() // its goroutine wakes, detaches its ports and exits
	}
	s.wg.Wait()
	s.mu.Lock()
	taps := s.taps
	s.taps = map[*Port]*svcTap{}
	s.mu.Unlock()
	for _, t := range taps {
		err = errors.Join(err, t.pump.Close(), t.closer.Close())
	}
	return err
}

// svcConn is one client connection and what it owns.
type svcConn struct {
	s        *Service
	c        *net.UnixConn
	pid, uid uint32
	buf, oob []byte

	// Owned by the connection's goroutine; List reads the ports through s.owned.
	ports    map[uint32]*svcPort
	nextID   uint32
	captures map[uint32]*captureSink

	logLeft atomic.Int32
}

func (c *svcConn) logf(format string, args ...any) {
	switch n := c.logLeft.Add(-1); {
	case n > 0:
		c.s.logf(format, args...)
	case n == 0:
		c.s.logf(format+" (further events of this client are not logged)", args...)
	}
}

func (c *svcConn) send(t MsgType, flags, seq uint32, payload []byte, fds []int) error {
	return sendMsg(c.c, AppendMessage(nil, t, flags, seq, payload), fds)
}

// serve reads requests until the peer goes away (EOF, error, Service.Close), then
// detaches everything the peer held.
func (c *svcConn) serve() {
	defer c.s.wg.Done()
	defer c.teardown()
	for {
		pkt, fds, err := recvMsg(c.c, c.buf, c.oob)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, ErrProto) {
				c.logf("vale: service: client pid %d: %v", c.pid, err)
			}
			if errors.Is(err, ErrProto) {
				// A packet that could not be read whole (truncated, too many
				// descriptors): answer and go on with the next one.
				c.s.errs.Add(1)
				_ = c.send(0, FlagReply|FlagError, 0, ErrorReply{Errno: uint32(unix.EMSGSIZE), Msg: err.Error()}.Encode(), nil)
				continue
			}
			return
		}
		c.s.requests.Add(1)
		c.handle(pkt, fds)
	}
}

// handle serves one packet. Every descriptor that came with it is closed when it
// returns, unless a handler took it over (a dup is kept instead).
func (c *svcConn) handle(pkt []byte, fds []int) {
	defer closeFDs(fds)
	h, payload, err := ParseMessage(pkt)
	if err == nil && h.Flags&(FlagReply|FlagError) != 0 {
		err = protoErr("a request with reply or error flags")
	}
	var req Request
	if err == nil {
		req, err = ParseRequest(h.Type, payload, len(fds))
	}
	var reply []byte
	var rfds []int
	if err == nil {
		reply, rfds, err = c.dispatch(req, fds)
	}
	if err != nil {
		c.s.errs.Add(1)
		errno := unix.EINVAL
		var en unix.Errno
		if errors.As(err, &en) {
			errno = en
		}
		if errors.Is(err, ErrProto) {
			c.logf("vale: service: client pid %d: %v", c.pid, err)
		}
		_ = c.send(h.Type, FlagReply|FlagError, h.Seq, ErrorReply{Errno: uint32(errno), Msg: err.Error()}.Encode(), nil)
		return
	}
	if err := c.send(h.Type, FlagReply, h.Seq, reply, rfds); err != nil {
		c.logf("vale: service: client pid %d: reply %v: %v", c.pid, h.Type, err)
	}
}

func (c *svcConn) dispatch(req Request, fds []int) ([]byte, []int, error) {
	switch r := req.(type) {
	case HelloReq:
		if r.Version != ProtoVersion {
			return nil, nil, fmt.Errorf("vale: service speaks version %d, client %d: %w", ProtoVersion, r.Version, unix.EPROTO)
		}
		return HelloReply{Version: ProtoVersion, PID: c.s.pid}.Encode(), nil, nil
	case AttachReq:
		return c.attach(r)
	case StartReq:
		return nil, nil, c.start(r, fds)
	case MoveCSBReq:
		return nil, nil, c.moveCSB(r, fds)
	case PortReq:
		p := c.ports[r.Port]
		if p == nil {
			return nil, nil, fmt.Errorf("vale: service: no port %d on this connection: %w", r.Port, unix.ENOENT)
		}
		if r.Type() == MsgStop {
			return nil, nil, c.s.stopLoop(p)
		}
		return nil, nil, c.detach(p)
	case ListReq:
		return c.s.list(r.Start).Encode(), nil, nil
	case TapReq:
		if r.Type() == MsgTapAttach {
			return nil, nil, c.s.attachTap(r.Switch, r.Tap)
		}
		return nil, nil, c.s.detachTap(r.Switch, r.Tap)
	case CaptureReq:
		return c.captureStart(r, fds[0])
	case CaptureStopReq:
		cs := c.captures[r.ID]
		if cs == nil {
			return nil, nil, fmt.Errorf("vale: service: no capture %d on this connection: %w", r.ID, unix.ENOENT)
		}
		delete(c.captures, r.ID)
		pk, dr := cs.stop()
		return CaptureStopReply{Packets: pk, Dropped: dr}.Encode(), nil, nil
	}
	return nil, nil, fmt.Errorf("vale: service: %v not served: %w", req.Type(), unix.ENOSYS)
}

// teardown detaches every port of the connection and stops its captures.
func (c *svcConn) teardown() {
	if len(c.ports) > 0 {
		c.s.deadPeers.Add(1)
		c.s.logf("vale: service: client pid %d gone: detaching its %d ports", c.pid, len(c.ports))
	}
	for _, p := range c.ports {
		_ = c.detach(p)
	}
	for id, cs := range c.captures {
		cs.stop()
		delete(c.captures, id)
	}
	c.c.Close()
	c.s.mu.Lock()
	delete(c.s.conns, c)
	c.s.mu.Unlock()
}

// svcPort is a port a client attached.
type svcPort struct {
	id    uint32
	name  string // as the client named it (options stripped)
	kind  uint8
	sw    *Port        // switch port, or nil
	np    *netmap.Port // the netmap port (switch port or pipe end)
	close func() error // detach (switch) or close (pipe end)
	owner uint32

	// Guarded by mu (List reads them from other goroutines).
	mu    sync.Mutex
	loop  *netmap.Kloop
	csb   *csbMap
	kicks []*notify.EventFD
	irqs  []*notify.EventFD
	mode  notify.Mode
	spin  time.Duration
	past  netmap.KloopStats // counters of loops already stopped
}

func (c *svcConn) attach(r AttachReq) ([]byte, []int, error) {
	if len(c.ports) >= MaxPortsPerConn {
		return nil, nil, fmt.Errorf("vale: service: %d ports on this connection already: %w", MaxPortsPerConn, unix.ENOSPC)
	}
	nm, err := netmap.ParseName(r.Name)
	if err != nil {
		return nil, nil, fmt.Errorf("%v: %w", err, unix.EINVAL)
	}
	cfg := netmap.PortConfig{TxRings: int(r.TxRings), RxRings: int(r.RxRings), TxSlots: int(r.TxSlots), RxSlots: int(r.RxSlots)}
	p := &svcPort{owner: c.pid}
	switch {
	case nm.Kind == netmap.KindVALE && !nm.Pipe:
		sp, err := c.s.reg.NewPort(r.Name, cfg)
		if err != nil {
			errno := unix.EINVAL
			if errors.Is(err, ErrNameInUse) {
				errno = unix.EEXIST
			} else if errors.Is(err, ErrSwitchFull) || errors.Is(err, ErrTooManySwitches) || errors.Is(err, netmap.ErrNoSpace) {
				errno = unix.ENOSPC
			}
			return nil, nil, fmt.Errorf("%v: %w", err, errno)
		}
		p.kind, p.sw, p.np, p.close = KindSwitchPort, sp, sp.Netmap(), sp.Detach
		p.name = nm.Switch + ":" + nm.Port
	case nm.Kind == netmap.KindPipeMaster || nm.Kind == netmap.KindPipeSlave:
		np, err := c.s.pipes.Open(r.Name, cfg)
		if err != nil {
			errno := unix.EINVAL
			if strings.Contains(err.Error(), "in use") {
				errno = unix.EBUSY
			}
			return nil, nil, fmt.Errorf("%v: %w", err, errno)
		}
		p.kind, p.np, p.close = KindPipeEnd, np, np.Close
		p.name, _, _ = strings.Cut(r.Name, "@")
	default:
		return nil, nil, fmt.Errorf("vale: service: %q: name a switch port valeX:Y or a pipe end NAME{N / NAME}N: %w", r.Name, unix.EINVAL)
	}
	np := p.np
	reg := np.Region()
	sealRegion(reg.FD())
	c.nextID++
	for c.ports[c.nextID] != nil || c.nextID == 0 {
		c.nextID++
	}
	p.id = c.nextID
	c.ports[p.id] = p
	c.s.mu.Lock()
	c.s.owned[np] = p
	c.s.mu.Unlock()
	c.s.nports.Add(1)
	rep := AttachReply{Port: p.id, Nifp: np.NifpOffset(), MapSize: reg.MapSize(),
		TxRings: uint32(np.NumTxRings()), RxRings: uint32(np.NumRxRings()),
		TxSlots: np.TxRing(0).NumSlots(), RxSlots: np.RxRing(0).NumSlots(), Pools: reg.PoolsInfo()}
	return rep.Encode(), []int{reg.FD()}, nil
}

// sealRegion forbids shrinking and growing a region memfd that allows seals: a
// client that truncated it would make the service fault on its own mapping.
func sealRegion(fd int) {
	_, _ = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
}

func (c *svcConn) detach(p *svcPort) error {
	err := c.s.stopLoop(p)
	delete(c.ports, p.id)
	c.s.mu.Lock()
	delete(c.s.owned, p.np)
	c.s.mu.Unlock()
	c.s.nports.Add(-1)
	if cerr := p.close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	return err
}

func (c *svcConn) start(r StartReq, fds []int) error {
	p := c.ports[r.Port]
	if p == nil {
		return fmt.Errorf("vale: service: no port %d on this connection: %w", r.Port, unix.ENOENT)
	}
	n := p.np.NumTxRings() + p.np.NumRxRings()
	if int(r.Rings) != n {
		return fmt.Errorf("vale: service: %s has %d rings, START names %d: %w", p.name, n, r.Rings, unix.EINVAL)
	}
	p.mu.Lock()
	running := p.loop != nil
	p.mu.Unlock()
	if running {
		return fmt.Errorf("vale: service: %s: host loop already running: %w", p.name, unix.EBUSY)
	}
	csb, err := mapCSB(fds[0], fds[1], r.AtokOff, r.KtoaOff, n)
	if err != nil {
		return fmt.Errorf("vale: service: %s: %w", p.name, err)
	}
	evs, err := adoptEventFDs(fds[2:])
	if err != nil {
		csb.unmap()
		return fmt.Errorf("vale: service: %s: %w", p.name, err)
	}
	mode, spin := notify.Block, time.Duration(r.SpinUs)*time.Microsecond
	if r.Mode == LoopAdaptive {
		mode = notify.Adaptive
	}
	p.mu.Lock()
	p.csb, p.kicks, p.irqs, p.mode, p.spin = csb, evs[:n], evs[n:], mode, spin
	p.mu.Unlock()
	if err := c.runLoop(p); err != nil {
		p.mu.Lock()
		p.releaseLocked()
		p.mu.Unlock()
		return err
	}
	return nil
}

// runLoop writes the CSB from the rings (ptnet's CREATE) and starts the loop.
func (c *svcConn) runLoop(p *svcPort) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	csb, err := netmap.NewCSB(p.csb.atok, p.csb.ktoa, len(p.kicks))
	if err == nil {
		err = netmap.InitCSB(p.np, csb)
	}
	if err != nil {
		return fmt.Errorf("vale: service: %s: CSB: %v: %w", p.name, err, unix.EINVAL)
	}
	pid, name := c.pid, p.name
	loop, err := netmap.StartKloop(netmap.KloopConfig{Name: name, Port: p.np, CSB: csb, Kicks: p.kicks, Irqs: p.irqs,
		Mode: p.mode, Spin: p.spin, Logf: func(format string, args ...any) {
			c.s.logf("vale: service: client pid %d: "+format, append([]any{pid}, args...)...)
		}})
	if err != nil {
		return fmt.Errorf("vale: service: %s: start host loop: %v: %w", p.name, err, unix.EIO)
	}
	p.loop = loop
	c.s.nloops.Add(1)
	return nil
}

func (c *svcConn) moveCSB(r MoveCSBReq, fds []int) error {
	p := c.ports[r.Port]
	if p == nil {
		return fmt.Errorf("vale: service: no port %d on this connection: %w", r.Port, unix.ENOENT)
	}
	p.mu.Lock()
	have := p.csb != nil
	n := len(p.kicks)
	p.mu.Unlock()
	if !have {
		return fmt.Errorf("vale: service: %s: no host loop started, nothing to move: %w", p.name, unix.ENXIO)
	}
	csb, err := mapCSB(fds[0], fds[1], r.AtokOff, r.KtoaOff, n)
	if err != nil {
		return fmt.Errorf("vale: service: %s: %w", p.name, err)
	}
	stuck, err := c.s.haltLoop(p)
	if stuck {
		csb.unmap()
		return err
	}
	p.mu.Lock()
	p.csb.unmap()
	p.csb = csb
	p.mu.Unlock()
	return c.runLoop(p)
}

// haltLoop stops p's loop (if any) without releasing its CSB or eventfds. stuck
// reports a loop that did not stop in time: everything it uses is then leaked.
func (s *Service) haltLoop(p *svcPort) (stuck bool, err error) {
	p.mu.Lock()
	loop := p.loop
	p.loop = nil
	p.mu.Unlock()
	if loop == nil {
		return false, nil
	}
	s.nloops.Add(-1)
	done := make(chan error, 1)
	go func() { done <- loop.Stop() }()
	select {
	case err = <-done:
	case <-time.After(stopTimeout):
		s.stuck.Add(1)
		s.logf("vale: service: %s: host loop did not stop within %v (a peer's eventfd blocks it); abandoning it", p.name, stopTimeout)
		p.mu.Lock()
		p.csb, p.kicks, p.irqs = nil, nil, nil // leaked on purpose: the thread may still use them
		p.mu.Unlock()
		return true, fmt.Errorf("vale: service: %s: host loop stuck: %w", p.name, unix.ETIMEDOUT)
	}
	p.mu.Lock()
	p.addPast(loop.Stats())
	p.mu.Unlock()
	return false, err
}

// stopLoop stops p's loop and releases its CSB mapping and eventfds.
func (s *Service) stopLoop(p *svcPort) error {
	stuck, err := s.haltLoop(p)
	if !stuck {
		p.mu.Lock()
		p.releaseLocked()
		p.mu.Unlock()
	}
	return err
}

func (p *svcPort) releaseLocked() {
	if p.csb != nil {
		p.csb.unmap()
		p.csb = nil
	}
	for _, e := range append(p.kicks, p.irqs...) {
		e.Close()
	}
	p.kicks, p.irqs = nil, nil
}

func (p *svcPort) addPast(st []netmap.KloopStats) { p.past = addStats(p.past, st...) }

func addStats(t netmap.KloopStats, st ...netmap.KloopStats) netmap.KloopStats {
	for _, r := range st {
		t.Syncs += r.Syncs
		t.Wakeups += r.Wakeups
		t.Kicks += r.Kicks
		t.Notifies += r.Notifies
		t.Interrupts += r.Interrupts
		t.Reinits += r.Reinits
		t.Errors += r.Errors
	}
	return t
}

// loopStats sums the past and running loops' counters.
func (p *svcPort) loopStats() (netmap.KloopStats, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.loop == nil {
		return p.past, false
	}
	return addStats(p.past, p.loop.Stats()...), true
}

// csbMap is a CSB mapped from a client's memfds: only the pages holding the two
// arrays.
type csbMap struct {
	maps       [][]byte
	atok, ktoa []byte
}

func (m *csbMap) unmap() {
	if m == nil {
		return
	}
	for _, b := range m.maps {
		_ = unix.Munmap(b)
	}
	m.maps, m.atok, m.ktoa = nil, nil, nil
}

// mapCSB maps the atok array (fdA at offA) and the ktoa array (fdK at offK), n
// entries each. Both files must be memfds sealed against shrinking (else the
// client could truncate them under the loop and make the service fault), the
// arrays inside them, and not overlapping.
func mapCSB(fdA, fdK int, offA, offK uint64, n int) (*csbMap, error) {
	size := uint64(n) * netmap.CSBEntrySize
	stA, err := checkMemfd(fdA, offA, size, "atok")
	if err != nil {
		return nil, err
	}
	stK, err := checkMemfd(fdK, offK, size, "ktoa")
	if err != nil {
		return nil, err
	}
	if stA.Dev == stK.Dev && stA.Ino == stK.Ino && offA < offK+size && offK < offA+size {
		return nil, fmt.Errorf("CSB arrays at %#x and %#x overlap: %w", offA, offK, unix.EINVAL)
	}
	m := &csbMap{}
	if m.atok, err = m.mapArray(fdA, offA, size); err == nil {
		m.ktoa, err = m.mapArray(fdK, offK, size)
	}
	if err != nil {
		m.unmap()
		return nil, err
	}
	return m, nil
}

func checkMemfd(fd int, off, size uint64, what string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return st, fmt.Errorf("CSB %s: fstat: %w", what, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return st, fmt.Errorf("CSB %s: not a memfd: %w", what, unix.EINVAL)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return st, fmt.Errorf("CSB %s: not a memfd (F_GET_SEALS: %v): %w", what, err, unix.EINVAL)
	}
	if seals&unix.F_SEAL_SHRINK == 0 {
		return st, fmt.Errorf("CSB %s: the memfd must be sealed against shrinking (F_SEAL_SHRINK): %w", what, unix.EPERM)
	}
	fsize := uint64(st.Size)
	if st.Size < 0 || off > fsize || fsize-off < size {
		return st, fmt.Errorf("CSB %s: %d bytes at %#x are past the %d-byte memfd: %w", what, size, off, fsize, unix.EFAULT)
	}
	return st, nil
}

func (m *csbMap) mapArray(fd int, off, size uint64) ([]byte, error) {
	pg := uint64(unix.Getpagesize())
	start := off &^ (pg - 1)
	end := (off + size + pg - 1) &^ (pg - 1)
	b, err := unix.Mmap(fd, int64(start), int(end-start), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("CSB: map %d bytes at %#x: %w", end-start, start, err)
	}
	m.maps = append(m.maps, b)
	o := off - start
	return b[o : o+size : o+size], nil
}

// adoptEventFDs takes a peer's eventfds: each is checked to be an eventfd, made
// non-blocking and wrapped (a dup, so closing the received descriptors later is
// fine).
func adoptEventFDs(fds []int) ([]*notify.EventFD, error) {
	out := make([]*notify.EventFD, 0, len(fds))
	fail := func(err error) ([]*notify.EventFD, error) {
		for _, e := range out {
			e.Close()
		}
		return nil, err
	}
	for i, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		if err != nil || link != "anon_inode:[eventfd]" {
			return fail(fmt.Errorf("descriptor %d of the request is not an eventfd (%q): %w", i+2, link, unix.EINVAL))
		}
		e, err := notify.NewEventFD()
		if err != nil {
			return fail(err)
		}
		// Replace our fresh eventfd's descriptor with the peer's (same number,
		// close-on-exec): notify.EventFD has no constructor from a descriptor.
		if err := unix.Dup3(fd, e.FD(), unix.O_CLOEXEC); err != nil {
			e.Close()
			return fail(fmt.Errorf("dup eventfd: %w", err))
		}
		if err := unix.SetNonblock(e.FD(), true); err != nil {
			e.Close()
			return fail(fmt.Errorf("eventfd non-blocking: %w", err))
		}
		out = append(out, e)
	}
	return out, nil
}

// list builds the listing page starting at entry start: switch ports by switch and
// index, then pipe ends by name.
func (s *Service) list(start uint32) ListReply {
	var all []ListEntry
	s.mu.Lock()
	owned := make(map[*netmap.Port]*svcPort, len(s.owned))
	for k, v := range s.owned {
		owned[k] = v
	}
	taps := make(map[*Port]bool, len(s.taps))
	for k := range s.taps {
		taps[k] = true
	}
	s.mu.Unlock()
	fill := func(e *ListEntry, p *svcPort) {
		if p == nil {
			return
		}
		e.OwnerPID = p.owner
		st, running := p.loopStats()
		e.Loop = running
		e.LoopKicks, e.LoopIrqs, e.LoopReinits, e.LoopWakeups = st.Kicks, st.Interrupts, st.Reinits, st.Wakeups
	}
	for _, sw := range s.reg.Switches() {
		for _, p := range sw.Ports() {
			c := p.Counters()
			e := ListEntry{Kind: KindSwitchPort, Index: uint16(p.Index()), Switch: sw.Name(), Name: p.Name(),
				RxFrames: c.RxFrames, RxBytes: c.RxBytes, TxFrames: c.TxFrames, TxBytes: c.TxBytes,
				Drops: c.Drops(), NoSpace: c.DropNoSpace, BadSlots: c.BadSlots, RingReinits: c.RingReinits}
			if taps[p] {
				e.Kind = KindTap
			}
			fill(&e, owned[p.Netmap()])
			all = append(all, e)
		}
	}
	var pipes []ListEntry
	for np, p := range owned {
		if p.kind != KindPipeEnd {
			continue
		}
		e := ListEntry{Kind: KindPipeEnd, Index: 0xffff, Name: p.name}
		for _, k := range np.Krings() {
			st := k.Stats()
			e.BadSlots += st.BadSlots
			e.RingReinits += st.Reinits
			e.Drops += st.Dropped
		}
		fill(&e, p)
		pipes = append(pipes, e)
	}
	sort.Slice(pipes, func(i, j int) bool { return pipes[i].Name < pipes[j].Name })
	all = append(all, pipes...)
	r := ListReply{Total: uint32(len(all))}
	if start > r.Total {
		start = r.Total
	}
	end := min(int(start)+maxListPage, len(all))
	r.Entries = all[start:end]
	r.Next = uint32(end)
	return r
}

func openTap(name string) (backends.Port, io.Closer, error) {
	if !tap.Exists(name) {
		if ok, why := tap.CanCreate(); !ok {
			return nil, nil, fmt.Errorf("TAP %s does not exist and the service cannot create it (%s): create it with `ip tuntap add %s mode tap`: %w", name, why, name, unix.EPERM)
		}
	}
	t, err := tap.Open(tap.Options{Name: name, Queues: 1})
	if err != nil {
		return nil, nil, err
	}
	return t.Queue(0), t, nil
}

func (s *Service) attachTap(swName, tapName string) error {
	sw, err := s.reg.Switch(swName)
	if err != nil {
		return fmt.Errorf("%v: %w", err, unix.ENOSPC)
	}
	if sw.PortByName(tapName) != nil {
		return fmt.Errorf("vale: service: %s already has a port %s: %w", swName, tapName, unix.EEXIST)
	}
	be, closer, err := s.cfg.OpenTap(tapName)
	if err != nil {
		return fmt.Errorf("vale: service: attach TAP %s to %s: %w", tapName, swName, err)
	}
	bp, err := sw.AttachBackend(tapName, be, BackendOptions{})
	if err == nil {
		if err = bp.Start(); err != nil {
			bp.Close()
		}
	}
	if err != nil {
		closer.Close()
		return fmt.Errorf("vale: service: attach TAP %s to %s: %w", tapName, swName, err)
	}
	s.mu.Lock()
	s.taps[bp.Port()] = &svcTap{sw: swName, name: tapName, pump: bp, closer: closer}
	s.mu.Unlock()
	s.logf("vale: service: TAP %s joined %s", tapName, swName)
	return nil
}

func (s *Service) detachTap(swName, tapName string) error {
	s.mu.Lock()
	var t *svcTap
	for p, x := range s.taps {
		if x.sw == swName && x.name == tapName {
			t = x
			delete(s.taps, p)
			break
		}
	}
	s.mu.Unlock()
	if t == nil {
		return fmt.Errorf("vale: service: no TAP %s on %s: %w", tapName, swName, unix.ENOENT)
	}
	s.logf("vale: service: TAP %s left %s", tapName, swName)
	return errors.Join(t.pump.Close(), t.closer.Close())
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
