package vale

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/pcap"
)

// captureSink is a Monitor that never blocks the switch: forwarding passes copy
// frames into a bounded queue (dropping and counting what does not fit), and a
// goroutine of its own writes them to the client's file. A client's file (a FIFO
// nobody reads, a slow filesystem) can therefore stall only its capture.
//
// Concurrency: WriteFragments from any goroutine; stop once.
type captureSink struct {
	port *Port
	w    *pcap.Writer
	f    *os.File

	mu     sync.Mutex
	q      []capFrame
	queued int
	closed bool
	wake   chan struct{}
	done   chan struct{}

	dropped atomic.Uint64
}

type capFrame struct {
	ts   time.Time
	data []byte
}

func (c *captureSink) WriteFragments(ts time.Time, frags [][]byte) error {
	n := 0
	for _, f := range frags {
		n += len(f)
	}
	c.mu.Lock()
	if c.closed || c.queued+n > captureQueue {
		c.mu.Unlock()
		c.dropped.Add(1)
		return nil
	}
	c.queued += n
	c.mu.Unlock()
	data := make([]byte, 0, n)
	for _, f := range frags {
		data = append(data, f...)
	}
	c.mu.Lock()
	c.q = append(c.q, capFrame{ts, data})
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

func (c *captureSink) run() {
	defer close(c.done)
	for {
		<-c.wake
		c.mu.Lock()
		q, closed := c.q, c.closed
		c.q = nil
		c.mu.Unlock()
		for _, fr := range q {
			_ = c.w.WritePacket(fr.ts, fr.data) // sticky error: later writes fail too
			c.mu.Lock()
			c.queued -= len(fr.data)
			c.mu.Unlock()
		}
		if closed {
			return
		}
	}
}

// stop removes the monitor, writes what is queued, and closes the file. A writer
// stuck on the file for stopTimeout is left behind (the file is closed under it,
// which ends a FIFO write).
func (c *captureSink) stop() (packets, dropped uint64) {
	c.port.RemoveMonitor(c)
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	select {
	case <-c.done:
		_ = c.w.Close()
	case <-time.After(stopTimeout):
	}
	_ = c.f.Close()
	return c.w.Packets(), c.dropped.Load()
}

// captureStart starts a capture of r.Name into fd, a file the client opened for
// writing (a regular file or a FIFO).
func (c *svcConn) captureStart(r CaptureReq, fd int) ([]byte, []int, error) {
	if len(c.captures) >= MaxCapturesPerConn {
		return nil, nil, fmt.Errorf("vale: service: %d captures on this connection already: %w", MaxCapturesPerConn, unix.ENOSPC)
	}
	swName, name, ok := strings.Cut(r.Name, ":")
	if !ok {
		return nil, nil, fmt.Errorf("vale: service: capture %q: name a switch port as valeX:Y: %w", r.Name, unix.EINVAL)
	}
	sw := c.s.reg.Get(swName)
	var p *Port
	if sw != nil {
		p = sw.PortByName(name)
	}
	if p == nil {
		return nil, nil, fmt.Errorf("vale: service: capture: no port %q: %w", r.Name, unix.ENOENT)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, nil, fmt.Errorf("vale: service: capture file: %w", err)
	}
	fifo := st.Mode&unix.S_IFMT == unix.S_IFIFO
	if st.Mode&unix.S_IFMT != unix.S_IFREG && !fifo {
		return nil, nil, fmt.Errorf("vale: service: capture file is not a regular file or FIFO: %w", unix.EINVAL)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_ACCMODE == unix.O_RDONLY {
		return nil, nil, fmt.Errorf("vale: service: capture file is not open for writing: %w", unix.EBADF)
	}
	own, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("vale: service: capture file: %w", err)
	}
	if fifo {
		// Non-blocking: the runtime poller then lets Close end a stuck write.
		_ = unix.SetNonblock(own, true)
	}
	f := os.NewFile(uintptr(own), "capture:"+r.Name)
	w, err := pcap.NewWriter(f, int(r.SnapLen))
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("vale: service: capture: %w", err)
	}
	cs := &captureSink{port: p, w: w, f: f, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go cs.run()
	if err := p.AddMonitor(cs, Direction(r.Dir)); err != nil {
		cs.stop()
		return nil, nil, fmt.Errorf("%v: %w", err, unix.ENOENT)
	}
	var id uint32 = 1
	for c.captures[id] != nil {
		id++
	}
	c.captures[id] = cs
	return CaptureReply{ID: id}.Encode(), nil, nil
}
