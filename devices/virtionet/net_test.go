package virtionet

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/seqpacket"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/devices/virtio"
	"github.com/ptvmm/ptvmm/vmm/bus"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// sockPort is a backend over one end of a SOCK_SEQPACKET socketpair: frame
// boundaries are kept, the test holds the other end as "the host".
// sockPort is a seqpacket backend whose writes can be made to fail as a deleted
// TAP's do.
type sockPort struct {
	*seqpacket.Port
	failGone bool
	onWrite  func() // if set, runs in the worker before each frame is written
}

func (s *sockPort) Writev(iovs [][]byte) (int, error) {
	if s.failGone {
		return 0, fmt.Errorf("test: %w", tap.ErrGone)
	}
	if s.onWrite != nil {
		s.onWrite()
	}
	return s.Port.Writev(iovs)
}

var _ backends.Port = (*sockPort)(nil)

type irqLine struct {
	ch   chan struct{}
	hook atomic.Pointer[func()] // if set, runs in the interrupting goroutine first
}

func (l *irqLine) Trigger() error {
	if h := l.hook.Load(); h != nil {
		(*h)()
	}
	select {
	case l.ch <- struct{}{}:
	default:
	}
	return nil
}

const (
	qsize   = 16
	ramSize = 1 << 20
	bufBase = 0x10000
)

func ringBase(q int) uint64 { return 0x1000 * uint64(q+1) }

// guest is a virtio-net driver over fake memory talking to the device through the
// PCI transport's modern registers.
type guest struct {
	t        testing.TB
	ram      []byte
	mmio     *bus.Bus
	bar4     uint64
	tr       *virtio.Transport
	dev      *Device
	host     int // the test's end of the backend socketpair
	port     *sockPort
	irq      *irqLine
	features uint64
	pairs    int
	hosts    []int      // the test's ends of each pair's socketpair
	next     [16]uint16 // next free descriptor per queue
	avail    [16]uint16
	usedSeen [16]uint16
	bufNext  uint64
	logs     []string
	logMu    sync.Mutex
}

func newGuest(t testing.TB, mtu int) *guest { return newGuestN(t, mtu, 1) }

// newGuestN builds a device with pairs queue pairs; opts adjust its Config.
func newGuestN(t testing.TB, mtu, pairs int, opts ...func(*Config)) *guest {
	g := &guest{t: t, ram: make([]byte, ramSize), irq: &irqLine{ch: make(chan struct{}, 1)}, bufNext: bufBase, pairs: pairs}
	mem, err := memory.FromBytes([]memory.Region{{Range: memory.Range{GPA: 0, Size: ramSize}, Host: g.ram, FD: -1}})
	require.NoError(t, err)
	var ports []backends.Port
	for i := 0; i < pairs; i++ {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		g.hosts = append(g.hosts, fds[1])
		t.Cleanup(func() { unix.Close(fds[1]) })
		p := &sockPort{Port: seqpacket.New(fds[0], "sock")}
		if i == 0 {
			g.port = p
		}
		ports = append(ports, p)
	}
	g.host = g.hosts[0]
	cfg := Config{MAC: [6]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}, Ports: ports, VnetHdr: true, MTU: mtu, QueueSize: qsize, Logf: g.logf}
	for _, o := range opts {
		o(&cfg)
	}
	g.dev, err = New(cfg)
	require.NoError(t, err)
	g.mmio = bus.New("mmio")
	root, err := pci.NewRoot(pci.Config{PIO: bus.New("pio"), MMIO: g.mmio, Reserved: []memory.Range{{GPA: 0, Size: ramSize}}})
	require.NoError(t, err)
	g.tr, err = virtio.NewTransport(virtio.TransportConfig{Mem: mem, Device: g.dev, Intx: g.irq, Logf: g.logf})
	require.NoError(t, err)
	g.dev.SetTransport(g.tr)
	fn, err := root.Add(-1, g.tr.Spec())
	require.NoError(t, err)
	require.NoError(t, g.tr.Attach(fn))
	g.bar4, _ = fn.BARAddr(4)
	t.Cleanup(func() {
		g.w(20, 1, 0) // reset: stops the workers
		g.dev.Close()
		g.tr.Close()
	})
	return g
}

func (g *guest) logf(format string, args ...any) {
	g.logMu.Lock()
	defer g.logMu.Unlock()
	g.logs = append(g.logs, fmt.Sprintf(format, args...))
}

func (g *guest) w(off uint64, n int, v uint64) {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	require.True(g.t, g.mmio.Write(g.bar4+off, b[:n]))
}

func (g *guest) r(off uint64, n int) uint64 {
	b := make([]byte, 8)
	require.True(g.t, g.mmio.Read(g.bar4+off, b[:n]))
	return binary.LittleEndian.Uint64(b)
}

// bringUp negotiates want (masked by what the device offers) and enables 3 queues.
func (g *guest) bringUp(want uint64) { g.bringUpWith(want, nil) }

// bringUpWith is bringUp with beforeStart run just before DRIVER_OK (queues set up,
// no worker yet).
func (g *guest) bringUpWith(want uint64, beforeStart func()) {
	g.w(20, 1, 0)
	g.next, g.avail, g.usedSeen = [16]uint16{}, [16]uint16{}, [16]uint16{}
	for i := range g.ram[:bufBase] {
		g.ram[i] = 0
	}
	g.w(20, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
	g.w(0, 4, 0)
	lo := g.r(4, 4)
	g.w(0, 4, 1)
	hi := g.r(4, 4)
	g.features = (hi<<32 | lo) & want
	g.w(8, 4, 0)
	g.w(12, 4, g.features&0xffffffff)
	g.w(8, 4, 1)
	g.w(12, 4, g.features>>32)
	g.w(20, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	require.NotZero(g.t, g.r(20, 1)&virtio.StatusFeaturesOK)
	for q := 0; q < 2*g.pairs+1; q++ {
		g.w(22, 2, uint64(q))
		g.w(24, 2, qsize)
		g.w(32, 8, ringBase(q))
		g.w(40, 8, ringBase(q)+0x200)
		g.w(48, 8, ringBase(q)+0x400)
		g.w(28, 2, 1)
	}
	if beforeStart != nil {
		beforeStart()
	}
	g.w(20, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
	require.True(g.t, g.dev.LinkUp() || true)
	require.True(g.t, g.tr.Active(), "device activated")
}

func (g *guest) alloc(n int) uint64 {
	a := g.bufNext
	g.bufNext += uint64(n+63) &^ 63
	return a
}

// post adds a chain of buffers (addr, len, write) to queue q and kicks.
func (g *guest) post(q int, bufs ...[3]uint64) uint16 {
	head := g.add(q, bufs...)
	g.publish(q)
	g.kick(q)
	return head
}

// publish makes the chains added to queue q visible (stores avail.idx).
func (g *guest) publish(q int) {
	virtio.StoreLE16(g.ram[ringBase(q)+0x200+2:], g.avail[q])
}

// kick notifies queue q.
func (g *guest) kick(q int) { g.w(0x3000+4*uint64(q), 2, uint64(q)) }

// add writes a chain of buffers (addr, len, write) and its avail ring entry for
// queue q; publish makes it visible.
func (g *guest) add(q int, bufs ...[3]uint64) uint16 {
	head := g.next[q]
	for i, b := range bufs {
		idx := (head + uint16(i)) % qsize
		off := ringBase(q) + uint64(idx)*16
		var fl uint16
		if b[2] != 0 {
			fl |= virtio.DescFWrite
		}
		if i < len(bufs)-1 {
			fl |= virtio.DescFNext
		}
		binary.LittleEndian.PutUint64(g.ram[off:], b[0])
		binary.LittleEndian.PutUint32(g.ram[off+8:], uint32(b[1]))
		binary.LittleEndian.PutUint16(g.ram[off+12:], fl)
		binary.LittleEndian.PutUint16(g.ram[off+14:], (idx+1)%qsize)
	}
	g.next[q] = (head + uint16(len(bufs))) % qsize
	av := ringBase(q) + 0x200
	binary.LittleEndian.PutUint16(g.ram[av+4+2*uint64(g.avail[q]%qsize):], head)
	g.avail[q]++
	return head
}

type usedElem struct{ id, len uint32 }

// waitUsed waits (interrupt-driven) until queue q has n new used entries.
func (g *guest) waitUsed(q, n int) []usedElem {
	var out []usedElem
	deadline := time.After(5 * time.Second)
	for {
		u := ringBase(q) + 0x400
		for g.usedSeen[q] != virtio.LoadLE16(g.ram[u+2:]) {
			off := u + 4 + 8*uint64(g.usedSeen[q]%qsize)
			out = append(out, usedElem{binary.LittleEndian.Uint32(g.ram[off:]), binary.LittleEndian.Uint32(g.ram[off+4:])})
			g.usedSeen[q]++
		}
		if len(out) >= n {
			return out
		}
		// As Linux's virtqueue_enable_cb: publish used_event (a full barrier), then
		// re-check before sleeping.
		virtio.StoreLE16(g.ram[ringBase(q)+0x200+4+2*qsize:], g.usedSeen[q])
		if g.usedSeen[q] != virtio.LoadLE16(g.ram[u+2:]) {
			continue
		}
		select {
		case <-g.irq.ch:
			g.r(0x1000, 1) // ISR read: drop the level
		case <-deadline:
			g.t.Fatalf("queue %d: %d of %d used entries after 5s", q, len(out), n)
		}
	}
}

func ethFrame(dst [6]byte, payload string) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f, dst[:])
	copy(f[6:], []byte{2, 0, 0, 0, 0, 9})
	binary.BigEndian.PutUint16(f[12:], 0x88b5)
	return append(f, payload...)
}

func (g *guest) hostRecv() []byte { return g.hostRecvOn(g.host) }

func (g *guest) hostRecvOn(fd int) []byte {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, 5000)
	require.NoError(g.t, err)
	require.Equal(g.t, 1, n, "host got no frame")
	b := make([]byte, 70000)
	m, err := unix.Read(fd, b)
	require.NoError(g.t, err)
	return b[:m]
}

const allFeatures = ^uint64(0)

func TestTransmit(t *testing.T) {
	g := newGuest(t, 0)
	g.bringUp(allFeatures)
	assert.NotZero(t, g.features&virtio.FVersion1)
	assert.NotZero(t, g.features&FMrgRxbuf)
	hdr := g.alloc(12)
	g.ram[hdr] = 1 // NEEDS_CSUM passes through untouched
	f := ethFrame([6]byte{2, 0, 0, 0, 0, 9}, "from the guest")
	a := g.alloc(len(f))
	copy(g.ram[a:], f)
	g.post(1, [3]uint64{hdr, 12, 0}, [3]uint64{a, 5, 0}, [3]uint64{a + 5, uint64(len(f) - 5), 0})
	got := g.hostRecv()
	require.Len(t, got, 12+len(f))
	assert.Equal(t, byte(1), got[0])
	assert.Equal(t, f, got[12:])
	u := g.waitUsed(1, 1)
	assert.Equal(t, uint32(0), u[0].id)
	st := g.dev.Stats()[0]
	assert.Equal(t, uint64(1), st.TxPackets)
	assert.Equal(t, uint64(len(f)), st.TxBytes)
}

func TestReceiveMergeable(t *testing.T) {
	g := newGuest(t, 3000)
	g.bringUp(allFeatures &^ (FGuestTSO4 | FGuestTSO6))
	for i := 0; i < 4; i++ {
		g.post(0, [3]uint64{g.alloc(1000), 1000, 1})
	}
	payload := bytes.Repeat([]byte("0123456789"), 250)
	f := ethFrame(g.dev.MAC(), string(payload))
	hdr := make([]byte, 12)
	hdr[0] = 2 // DATA_VALID from the host
	_, err := unix.Write(g.host, append(hdr, f...))
	require.NoError(t, err)
	u := g.waitUsed(0, 3)
	require.Len(t, u, 3, "12+%d bytes over 1000-byte buffers", len(f))
	assert.Equal(t, []usedElem{{0, 1000}, {1, 1000}, {2, uint32(12 + len(f) - 2000)}}, u)
	first := bufBase
	assert.Equal(t, byte(2), g.ram[first])
	assert.Equal(t, uint16(3), binary.LittleEndian.Uint16(g.ram[first+10:]), "num_buffers")
	var got []byte
	for i := 0; i < 3; i++ {
		got = append(got, g.ram[bufBase+uint64(i)*1024:bufBase+uint64(i)*1024+uint64(u[i].len)]...)
	}
	assert.Equal(t, f, got[12:])
	assert.Equal(t, uint64(1), g.dev.Stats()[0].RxPackets)
}

func TestControlQueueFilter(t *testing.T) {
	g := newGuest(t, 0)
	g.bringUp(allFeatures)
	// PROMISC off.
	cmd := g.alloc(3)
	copy(g.ram[cmd:], []byte{ctrlRx, ctrlRxPromisc, 0})
	ack := g.alloc(1)
	g.ram[ack] = 0xff
	g.post(2, [3]uint64{cmd, 3, 0}, [3]uint64{ack, 1, 1})
	g.waitUsed(2, 1)
	assert.Equal(t, byte(ackOK), g.ram[ack])
	// An unknown class is refused.
	copy(g.ram[cmd:], []byte{9, 9, 0})
	g.post(2, [3]uint64{cmd, 3, 0}, [3]uint64{ack, 1, 1})
	g.waitUsed(2, 1)
	assert.Equal(t, byte(ackErr), g.ram[ack])
	// A MAC table with a lying entry count is refused.
	tbl := g.alloc(16)
	binary.LittleEndian.PutUint32(g.ram[tbl+2:], 1000)
	copy(g.ram[tbl:], []byte{ctrlMAC, ctrlMACTableSet})
	g.post(2, [3]uint64{tbl, 14, 0}, [3]uint64{ack, 1, 1})
	g.waitUsed(2, 1)
	assert.Equal(t, byte(ackErr), g.ram[ack])

	g.post(0, [3]uint64{g.alloc(2048), 2048, 1})
	// A frame for another MAC is dropped, ours is delivered.
	other := ethFrame([6]byte{2, 1, 1, 1, 1, 1}, "not for us")
	mine := ethFrame(g.dev.MAC(), "for us")
	_, err := unix.Write(g.host, append(make([]byte, 12), other...))
	require.NoError(t, err)
	_, err = unix.Write(g.host, append(make([]byte, 12), mine...))
	require.NoError(t, err)
	u := g.waitUsed(0, 1)
	assert.Equal(t, uint32(12+len(mine)), u[0].len)
	st := g.dev.Stats()[0]
	assert.Equal(t, uint64(1), st.RxDropped)
	assert.Equal(t, uint64(1), st.RxPackets)
}

func TestLinkAndReset(t *testing.T) {
	g := newGuest(t, 0)
	g.bringUp(allFeatures)
	assert.Equal(t, uint64(StatusLinkUp), g.r(0x2000+cfgStatus, 2))
	g.dev.SetLink(false)
	select {
	case <-g.irq.ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no config interrupt")
	}
	assert.Equal(t, uint64(2), g.r(0x1000, 1), "ISR config bit")
	assert.Zero(t, g.r(0x2000+cfgStatus, 2))
	assert.Equal(t, uint64(1), g.r(0x2000+cfgMaxPairs, 2))
	g.dev.SetLink(true)
	<-g.irq.ch
	g.r(0x1000, 1)

	// Reset and bring up again (rmmod/modprobe): traffic flows after it.
	g.bringUp(allFeatures)
	f := ethFrame([6]byte{2, 0, 0, 0, 0, 9}, "after reset")
	a := g.alloc(12 + len(f))
	copy(g.ram[a+12:], f)
	g.post(1, [3]uint64{a, uint64(12 + len(f)), 0})
	assert.Equal(t, f, g.hostRecv()[12:])
}

func TestLegacyHeaderWithoutMergeable(t *testing.T) {
	g := newGuest(t, 0)
	// A VERSION_1 driver without MRG_RXBUF still uses the 12-byte header.
	g.bringUp(virtio.FVersion1 | FMAC)
	g.post(0, [3]uint64{g.alloc(1600), 1600, 1})
	f := ethFrame(g.dev.MAC(), "small")
	_, err := unix.Write(g.host, append(make([]byte, 12), f...))
	require.NoError(t, err)
	u := g.waitUsed(0, 1)
	assert.Equal(t, uint32(12+len(f)), u[0].len)
	assert.Equal(t, uint16(1), binary.LittleEndian.Uint16(g.ram[bufBase+10:]))
	assert.Equal(t, 12, hdrLen(virtio.FVersion1))
	assert.Equal(t, 10, hdrLen(FMAC))
}

func TestBackendGoneTakesLinkDown(t *testing.T) {
	g := newGuest(t, 0)
	g.bringUp(allFeatures)
	g.port.failGone = true
	a := g.alloc(64)
	for i := 0; i < 2; i++ {
		g.post(1, [3]uint64{a, 64, 0})
		g.waitUsed(1, 1)
	}
	assert.False(t, g.dev.LinkUp())
	st := g.dev.Stats()[0]
	assert.Equal(t, uint64(2), st.TxDropped)
	g.logMu.Lock()
	defer g.logMu.Unlock()
	n := 0
	for _, l := range g.logs {
		if bytes.Contains([]byte(l), []byte("gone")) {
			n++
		}
	}
	assert.Equal(t, 1, n, "exactly one log line: %q", g.logs)
}

func TestBrokenRingNeedsReset(t *testing.T) {
	g := newGuest(t, 0)
	g.bringUp(allFeatures)
	av := ringBase(1) + 0x200
	virtio.StoreLE16(g.ram[av+2:], 100) // avail idx jumps past the queue size
	g.w(0x3000+4, 2, 1)
	select {
	case <-g.irq.ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no config interrupt")
	}
	assert.NotZero(t, g.r(20, 1)&virtio.StatusNeedsReset)
}

func TestNewRejects(t *testing.T) {
	_, err := New(Config{})
	assert.Error(t, err)
	p := []backends.Port{&sockPort{}}
	_, err = New(Config{Ports: p, MTU: 20})
	assert.Error(t, err)
	_, err = New(Config{Ports: p, QueueSize: 100})
	assert.Error(t, err)
}

func TestMACTableParse(t *testing.T) {
	b := []byte{1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0}
	uni, rest, err := macTable(b)
	require.NoError(t, err)
	assert.Equal(t, [][6]byte{{1, 2, 3, 4, 5, 6}}, uni)
	multi, rest, err := macTable(rest)
	require.NoError(t, err)
	assert.Empty(t, multi)
	assert.Empty(t, rest)
	_, _, err = macTable([]byte{0xff, 0xff, 0xff, 0xff})
	assert.Error(t, err)
	_, _, err = macTable([]byte{1})
	assert.Error(t, err)
}

type capturePort struct {
	sockPort
	frames [][]byte
}

func (c *capturePort) Writev(iovs [][]byte) (int, error) {
	var f []byte
	for _, v := range iovs {
		f = append(f, v...)
	}
	c.frames = append(c.frames, f)
	return len(f), nil
}

func (c *capturePort) Send(frames [][]byte) (int, error) {
	for _, f := range frames {
		c.frames = append(c.frames, append([]byte(nil), f...))
	}
	return len(frames), nil
}

// FuzzTX feeds arbitrary TX chains (split points, header bytes, lengths) to the
// send path: no panic, and a sent frame is exactly the chain's bytes.
func FuzzTX(f *testing.F) {
	f.Add(make([]byte, 60), []byte{12, 20}, true)
	f.Add([]byte{1, 4}, []byte{1}, false)
	f.Fuzz(func(t *testing.T, data []byte, cuts []byte, vnet bool) {
		cp := &capturePort{}
		d, err := New(Config{Ports: []backends.Port{cp}, VnetHdr: vnet})
		require.NoError(t, err)
		p := newPair(d, 0, nil, nil, virtio.FVersion1|FMrgRxbuf, modernHdrLen)
		var c virtio.Chain
		rest := data
		for _, k := range cuts {
			n := min(int(k), len(rest))
			c.Bufs = append(c.Bufs, virtio.Buf{Data: rest[:n]})
			rest = rest[n:]
		}
		c.Bufs = append(c.Bufs, virtio.Buf{Data: rest})
		c.NRead = len(c.Bufs)
		c.ReadLen = uint64(len(data))
		p.sendChain(&c)
		st := d.Stats()[0]
		require.Equal(t, uint64(1), st.TxPackets+st.TxDropped)
		if st.TxPackets == 1 && vnet {
			require.Equal(t, [][]byte{data}, cp.frames)
		}
		if st.TxPackets == 1 && !vnet {
			require.Equal(t, [][]byte{data[12:]}, cp.frames, "header stripped")
		}
		if len(data) < 12+14 {
			require.Equal(t, uint64(1), st.TxDropped)
		}
		if !vnet {
			// The batched path (plain port, no flow control) sends what sendChain does.
			bp := &capturePort{}
			bd, err := New(Config{Ports: []backends.Port{bp}})
			require.NoError(t, err)
			b := newPair(bd, 0, nil, nil, virtio.FVersion1|FMrgRxbuf, modernHdrLen)
			require.True(t, b.sendBatched())
			// Behind a one-buffer chain, so the chain lands at another batch position.
			one := append(make([]byte, 12), ethFrame([6]byte{2, 0, 0, 0, 0, 1}, "x")...)
			b.queueChain(&virtio.Chain{Bufs: []virtio.Buf{{Data: one}}, NRead: 1, ReadLen: uint64(len(one))})
			b.queueChain(&c)
			b.sendTX()
			bs := bd.Stats()[0]
			require.Equal(t, st.TxPackets+1, bs.TxPackets)
			require.Equal(t, st.TxDropped, bs.TxDropped)
			require.Equal(t, append([][]byte{one[12:]}, cp.frames...), bp.frames)
			require.Len(t, b.txHeads, 2, "every chain goes back to the guest")
		}
	})
}

// recordPort is a plain backend (no header, no flow control) that keeps what each
// Send carried. Safe for the worker and the test at once.
type recordPort struct {
	mu     sync.Mutex
	sends  int
	frames [][]byte
}

func (r *recordPort) Name() string                      { return "record" }
func (r *recordPort) Recv([][]byte, []int) (int, error) { return 0, nil }
func (r *recordPort) ReadyFD() int                      { return -1 }
func (r *recordPort) Close() error                      { return nil }

func (r *recordPort) Send(frames [][]byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sends++
	for _, f := range frames {
		r.frames = append(r.frames, append([]byte(nil), f...))
	}
	return len(frames), nil
}

// TestTransmitBatched: on a plain port without flow control the TX chains of a kick
// go out in few Sends, in ring order, one-buffer chains and scattered ones alike;
// a chain too short for a frame is dropped and counted, and every chain is used.
func TestTransmitBatched(t *testing.T) {
	rp := &recordPort{}
	g := newGuestN(t, 0, 1, func(c *Config) { c.VnetHdr = false; c.Ports = []backends.Port{rp} })
	g.bringUp(allFeatures)
	// Rounds of five chains (at most 15 of the ring's 16 descriptors), each made
	// visible with one avail.idx store and one kick.
	const rounds, per = 20, 5
	var want [][]byte
	for r := range rounds {
		for k := range per {
			i := r*per + k
			f := ethFrame([6]byte{2, 0, 0, 0, 0, 9}, fmt.Sprintf("frame %03d", i))
			a := g.alloc(12 + len(f))
			copy(g.ram[a+12:], f)
			switch {
			case i == 52: // shorter than a header and an Ethernet header
				g.add(1, [3]uint64{a, 12 + 13, 0})
				continue
			case i%3 == 0: // header, then the frame in two pieces
				g.add(1, [3]uint64{a, 12, 0}, [3]uint64{a + 12, 7, 0}, [3]uint64{a + 19, uint64(len(f) - 7), 0})
			default: // header and frame in one buffer, as Linux sends
				g.add(1, [3]uint64{a, uint64(12 + len(f)), 0})
			}
			want = append(want, f)
		}
		g.publish(1)
		g.kick(1)
		require.Len(t, g.waitUsed(1, per), per, "round %d: every chain used", r)
	}
	st := g.dev.Stats()[0]
	assert.Equal(t, uint64(rounds*per-1), st.TxPackets)
	assert.Equal(t, uint64(1), st.TxDropped)
	rp.mu.Lock()
	defer rp.mu.Unlock()
	assert.Equal(t, want, rp.frames)
	assert.LessOrEqual(t, rp.sends, rounds, "one Send for the frames of a kick")
}

// postIndirect adds one chain made of an indirect table of n writable buffers of
// size bytes each, and kicks.
func (g *guest) postIndirect(q, n, size int) {
	tbl := g.alloc(16 * n)
	for i := 0; i < n; i++ {
		off := tbl + uint64(i)*16
		binary.LittleEndian.PutUint64(g.ram[off:], g.alloc(size))
		binary.LittleEndian.PutUint32(g.ram[off+8:], uint32(size))
		fl := uint16(virtio.DescFWrite)
		if i < n-1 {
			fl |= virtio.DescFNext
		}
		binary.LittleEndian.PutUint16(g.ram[off+12:], fl)
		binary.LittleEndian.PutUint16(g.ram[off+14:], uint16(i+1))
	}
	head := g.next[q]
	off := ringBase(q) + uint64(head)*16
	binary.LittleEndian.PutUint64(g.ram[off:], tbl)
	binary.LittleEndian.PutUint32(g.ram[off+8:], uint32(16*n))
	binary.LittleEndian.PutUint16(g.ram[off+12:], virtio.DescFIndirect)
	g.next[q] = (head + 1) % qsize
	av := ringBase(q) + 0x200
	binary.LittleEndian.PutUint16(g.ram[av+4+2*uint64(g.avail[q]%qsize):], head)
	g.avail[q]++
	virtio.StoreLE16(g.ram[av+2:], g.avail[q])
	g.w(0x3000+4*uint64(q), 2, uint64(q))
}

// TestReceiveManyTinyBuffers: receive buffers so fragmented that one readv cannot
// take enough of them for the largest frame must not make the worker spin; the
// frame is delivered into what fits.
func TestReceiveManyTinyBuffers(t *testing.T) {
	g := newGuest(t, 0)
	g.bringUp(allFeatures &^ (FGuestTSO4 | FGuestTSO6))
	for i := 0; i < 3; i++ {
		g.postIndirect(0, 600, 1)
	}
	f := ethFrame(g.dev.MAC(), "tiny buffers")
	_, err := unix.Write(g.host, append(make([]byte, 12), f...))
	require.NoError(t, err)
	u := g.waitUsed(0, 1)
	assert.Equal(t, uint32(12+len(f)), u[0].len)
	assert.Equal(t, uint64(1), g.dev.Stats()[0].RxPackets)
	// A frame longer than one readv's 1024 one-byte buffers is cut there.
	big := ethFrame(g.dev.MAC(), string(make([]byte, 1400)))
	_, err = unix.Write(g.host, append(make([]byte, 12), big...))
	require.NoError(t, err)
	u = g.waitUsed(0, 2)
	assert.Equal(t, []usedElem{{1, 600}, {2, 1024 - 600}}, u)
}

// TestMultiqueue: each pair's worker serves its own queues and port; the counters
// are per pair, and the control queue sets the number of pairs in use.
func TestMultiqueue(t *testing.T) {
	g := newGuestN(t, 0, 2)
	g.bringUp(allFeatures)
	require.NotZero(t, g.features&FMQ)
	assert.Equal(t, uint64(2), g.r(0x2000+cfgMaxPairs, 2))
	ctrl := 2 * g.pairs
	cmd := g.alloc(4)
	copy(g.ram[cmd:], []byte{ctrlMQ, ctrlMQPairsSet, 2, 0})
	ack := g.alloc(1)
	g.post(ctrl, [3]uint64{cmd, 4, 0}, [3]uint64{ack, 1, 1})
	g.waitUsed(ctrl, 1)
	assert.Equal(t, byte(ackOK), g.ram[ack])
	assert.Equal(t, 2, g.dev.ActivePairs())

	for pair := 0; pair < 2; pair++ {
		f := ethFrame([6]byte{2, 0, 0, 0, 0, 9}, fmt.Sprintf("tx on pair %d", pair))
		a := g.alloc(12 + len(f))
		copy(g.ram[a+12:], f)
		g.post(2*pair+1, [3]uint64{a, uint64(12 + len(f)), 0})
		assert.Equal(t, f, g.hostRecvOn(g.hosts[pair])[12:], "pair %d", pair)
		g.post(2*pair, [3]uint64{g.alloc(2048), 2048, 1})
		in := ethFrame(g.dev.MAC(), fmt.Sprintf("rx on pair %d", pair))
		_, err := unix.Write(g.hosts[pair], append(make([]byte, 12), in...))
		require.NoError(t, err)
		u := g.waitUsed(2*pair, 1)
		assert.Equal(t, uint32(12+len(in)), u[0].len)
	}
	for pair, st := range g.dev.Stats() {
		assert.Equal(t, uint64(1), st.TxPackets, "pair %d", pair)
		assert.Equal(t, uint64(1), st.RxPackets, "pair %d", pair)
	}
}

type discardPort struct{ sockPort }

func (discardPort) Writev(iovs [][]byte) (int, error) { return len(iovs), nil }

// BenchmarkSendChain is the per-frame device cost of the TX path (chain to backend
// writev), without the syscall.
func BenchmarkSendChain(b *testing.B) {
	d, err := New(Config{Ports: []backends.Port{&discardPort{}}, VnetHdr: true})
	require.NoError(b, err)
	p := newPair(d, 0, nil, nil, virtio.FVersion1|FMrgRxbuf, modernHdrLen)
	hdr, frame := make([]byte, 12), ethFrame([6]byte{2, 0, 0, 0, 0, 1}, string(make([]byte, 1500)))
	c := virtio.Chain{Bufs: []virtio.Buf{{Data: hdr}, {Data: frame}}, NRead: 2, ReadLen: uint64(12 + len(frame))}
	b.ReportAllocs()
	for b.Loop() {
		p.sendChain(&c)
	}
	require.Equal(b, uint64(0), d.Stats()[0].TxDropped)
}

func TestOffloadFeatures(t *testing.T) {
	p := []backends.Port{&sockPort{}}
	on, err := New(Config{Ports: p, VnetHdr: true})
	require.NoError(t, err)
	off, err := New(Config{Ports: p, VnetHdr: true, NoOffloads: true})
	require.NoError(t, err)
	plain, err := New(Config{Ports: p})
	require.NoError(t, err)
	tso := uint64(FCsum | FGuestCsum | FHostTSO4 | FHostTSO6 | FGuestTSO4 | FGuestTSO6)
	assert.Equal(t, tso, on.Features()&tso)
	assert.Zero(t, off.Features()&tso)
	assert.Zero(t, plain.Features()&tso, "no header on the port: nothing to pass offloads in")
	assert.Equal(t, 0x7, tunOffloads(FGuestCsum|FGuestTSO4|FGuestTSO6))
	assert.Zero(t, tunOffloads(FGuestTSO4), "TSO without checksum offload is meaningless")
}

// TestTransmitPublishesUsedWithinBatch: a batch of TX chains gets its used
// entries published every quarter ring (at most every 32 chains), not only at
// the end, so a driver reclaiming buffers from the used ring gets them back early.
func TestTransmitPublishesUsedWithinBatch(t *testing.T) {
	g := newGuest(t, 0)
	g.bringUp(allFeatures)
	const n = qsize
	var sent int
	seen := make([]uint16, 0, n)
	g.port.onWrite = func() {
		// The worker's view of used.idx just before it writes frame number sent.
		seen = append(seen, virtio.LoadLE16(g.ram[ringBase(1)+0x400+2:]))
		sent++
	}
	f := ethFrame([6]byte{2, 0, 0, 0, 0, 9}, "batch")
	a := g.alloc(12 + len(f)) // header and frame in one buffer: n chains fill the ring
	copy(g.ram[a+12:], f)
	for i := 0; i < n; i++ {
		g.add(1, [3]uint64{a, uint64(12 + len(f)), 0})
	}
	g.publish(1) // all n at once, and one kick: the worker takes them in one batch
	g.kick(1)
	u := g.waitUsed(1, n)
	require.Len(t, u, n)
	require.Len(t, seen, n)
	every := qsize / 4
	for i, v := range seen {
		assert.Equal(t, uint16(i/every*every), v, "used.idx seen before frame %d", i)
	}
}
