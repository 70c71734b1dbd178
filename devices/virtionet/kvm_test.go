package virtionet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/seqpacket"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/devices/virtio"
	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/internal/kvmtest"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// The guest-TX rig: a CPL3 micro guest (micro.VirtqTX) is the TX half of a virtio-net
// driver on the host's /dev/kvm. The test plays the driver's set-up role through the
// real virtio-pci transport, with the queue doorbells bound as KVM ioeventfds as vmm
// does; from then on every frame goes guest avail ring -> ioeventfd -> the pair's
// notify.Worker -> sendChain -> backend writev, with no exit to Go.

// Guest-physical layout of the rig.
const (
	kvmCounters = boot.MicroDataAddr      // kicks, ring-room waits, credit waits
	kvmCredit   = boot.MicroDataAddr + 64 // qword the receiver raises (flow control)
	kvmTxRings  = 0x20_0000               // desc, avail, used: one page each
	kvmRxRings  = 0x20_4000
	kvmBufs     = 0x40_0000
	kvmQSize    = 256
	kvmRAM      = 24 << 20
	kvmHdrLen   = modernHdrLen // VERSION_1 is negotiated
)

// txKind is one kind of frame the guest sends.
type txKind struct {
	name     string
	frameLen int  // Ethernet frame without FCS
	gso      bool // TCPv4 GSO with checksum offload
	perOp    int  // frames per benchmark op
}

var txKinds = []txKind{
	{"64B", 64, false, 100_000},
	{"1514B", 1514, false, 100_000},
	{"GSO64K", 65226, true, 10_240},
}

func (k txKind) stride() uint64 {
	if k.gso {
		return 1 << 16
	}
	return 2048
}

// seqOff is where the frame's 32-bit sequence number sits: the first payload bytes
// after the UDP or TCP header.
func (k txKind) seqOff() int {
	if k.gso {
		return 14 + 20 + 20
	}
	return 14 + 20 + 8
}

var (
	kvmGuestMAC = [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	// A unicast destination that is not the TAP's: the host stack drops the frames
	// as PACKET_OTHERHOST right after taking them, so the receive side costs little.
	kvmPeerMAC = [6]byte{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
)

// template is the virtio-net header plus frame for kind k, sequence number 0.
func (k txKind) template() []byte {
	b := make([]byte, kvmHdrLen+k.frameLen)
	h, f := b[:kvmHdrLen], b[kvmHdrLen:]
	if k.gso {
		h[0] = hdrNeedsCsum
		h[1] = 1                                 // VIRTIO_NET_HDR_GSO_TCPV4
		binary.LittleEndian.PutUint16(h[2:], 54) // hdr_len
		binary.LittleEndian.PutUint16(h[4:], 1448)
		binary.LittleEndian.PutUint16(h[6:], 34) // csum_start: the TCP header
		binary.LittleEndian.PutUint16(h[8:], 16) // csum_offset: tcphdr.check
	}
	copy(f[0:], kvmPeerMAC[:])
	copy(f[6:], kvmGuestMAC[:])
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(k.frameLen-14))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	copy(ip[12:], []byte{10, 0, 0, 2})
	copy(ip[16:], []byte{10, 0, 0, 1})
	l4 := f[34:]
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], 5201)
	if k.gso {
		ip[9] = 6
		l4[12] = 5 << 4
		l4[13] = 0x18 // PSH, ACK
		binary.BigEndian.PutUint16(l4[14:], 0xffff)
		// With NEEDS_CSUM the checksum field holds the pseudo-header sum, as Linux
		// leaves it for the device.
		ps := uint32(0x0a00+0x0002+0x0a00+0x0001+6) + uint32(k.frameLen-34) // src, dst, proto, length
		for ps > 0xffff {
			ps = ps&0xffff + ps>>16
		}
		binary.BigEndian.PutUint16(l4[16:], uint16(ps))
	} else {
		ip[9] = 17
		binary.BigEndian.PutUint16(l4[4:], uint16(k.frameLen-34))
	}
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	for i := k.seqOff() + 4; i < len(f); i++ {
		f[i] = byte(i * 7)
	}
	return b
}

// txRig is one guest, device and backend wired together.
type txRig struct {
	tb     testing.TB
	kind   txKind
	g      *kvmtest.Guest
	dev    *Device
	tr     *virtio.Transport
	mmio   func(off uint64, n int, v uint64)
	bar4   uint64
	tapDev *tap.Tap
	peer   int // seqpacket: the far end; tap: an AF_PACKET socket (or -1)
	credit *uint64
	window uint64
}

type rigOptions struct {
	tap      bool
	eventIdx bool
	reader   bool // a receiver drains the far end and grants credit
}

func newTXRig(tb testing.TB, k txKind, o rigOptions) *txRig {
	tb.Helper()
	// The doorbell address is only known once the BAR is placed, so the guest starts
	// with a placeholder program that run replaces.
	placeholder := micro.New(boot.MicroCodeAddr)
	placeholder.Halt()
	code, err := placeholder.Assemble()
	require.NoError(tb, err)
	g := kvmtest.New(tb, kvmtest.Config{RAM: kvmRAM, Code: code})
	r := &txRig{tb: tb, kind: k, g: g, peer: -1}

	var port backends.Port
	cfg := Config{MAC: kvmGuestMAC, VnetHdr: true, QueueSize: kvmQSize}
	if o.tap {
		name := fmt.Sprintf("ptvg%d%s", os.Getpid()%100000, strings.ToLower(k.name[:2]))
		r.tapDev, err = tap.Open(tap.Options{Name: name, VnetHdr: true})
		require.NoError(tb, err)
		// Keep the host stack quiet on the link (no IPv6 autoconfiguration traffic).
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0o644)
		port, cfg.Offloads = r.tapDev.Queue(0), r.tapDev
		if o.reader {
			r.peer = packetSocket(tb, name)
			r.window = socketWindow(tb, r.peer, unix.SO_RCVBUF, k)
		}
	} else {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		require.NoError(tb, err)
		// Room for many frames in flight; the receiver's credit keeps the guest
		// within it, so no frame is dropped for a full socket.
		_ = unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 16<<20)
		if v, _ := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF); v < 8<<20 {
			_ = unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<20)
		}
		port, r.peer = seqpacket.New(fds[0], "kvm-seqpacket"), fds[1]
		tb.Cleanup(func() { unix.Close(fds[1]) })
		r.window = socketWindow(tb, fds[0], unix.SO_SNDBUF, k)
	}
	cfg.Ports = []backends.Port{port}
	r.dev, err = New(cfg)
	require.NoError(tb, err)

	ram := []memory.Range{{GPA: 0, Size: kvmRAM}}
	root, err := pci.NewRoot(pci.Config{PIO: g.PIO, MMIO: g.MMIO, Reserved: ram})
	require.NoError(tb, err)
	bells := func(s notify.DoorbellSpec) (virtio.Bell, error) { return notify.NewDoorbell(g.VM, s) }
	r.tr, err = virtio.NewTransport(virtio.TransportConfig{Mem: g.Mem, Device: r.dev, Bells: bells})
	require.NoError(tb, err)
	r.dev.SetTransport(r.tr)
	fn, err := root.Add(-1, r.tr.Spec())
	require.NoError(tb, err)
	require.NoError(tb, r.tr.Attach(fn))
	var ok bool
	r.bar4, ok = fn.BARAddr(4)
	require.True(tb, ok, "BAR4 placed")
	r.mmio = func(off uint64, n int, v uint64) {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], v)
		require.True(tb, g.MMIO.Write(r.bar4+off, b[:n]), "register %#x", off)
	}
	tb.Cleanup(func() {
		r.mmio(ccDeviceStatusOff, 1, 0) // reset: stops the worker
		r.dev.Close()
		r.tr.Close()
	})

	cred, err := g.Mem.Slice(kvmCredit, 8)
	require.NoError(tb, err)
	r.credit = (*uint64)(unsafe.Pointer(&cred[0]))
	if !o.reader {
		atomic.StoreUint64(r.credit, ^uint64(0))
	}
	r.setUpDriver(o.eventIdx)
	return r
}

// Modern common-configuration registers (virtio 1.x, 4.1.4.3).
const (
	ccDeviceStatusOff = 20
	kvmNotifyOff      = 0x3000
)

// setUpDriver negotiates features, lays out the RX queue (no buffers) and the TX queue
// (every descriptor a one-buffer chain to its pre-filled frame) and sets DRIVER_OK.
func (r *txRig) setUpDriver(eventIdx bool) {
	tb, mem := r.tb, r.g.Mem
	read := func(off uint64, n int) uint64 {
		var b [8]byte
		require.True(tb, r.g.MMIO.Read(r.bar4+off, b[:n]))
		return binary.LittleEndian.Uint64(b[:])
	}
	r.mmio(ccDeviceStatusOff, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
	r.mmio(0, 4, 0)
	offered := read(4, 4)
	r.mmio(0, 4, 1)
	offered |= read(4, 4) << 32
	want := uint64(virtio.FVersion1)
	if eventIdx {
		want |= virtio.FEventIdx
	}
	if r.kind.gso {
		want |= FCsum | FHostTSO4
	}
	require.Equal(tb, want, offered&want, "device offers the features the driver needs")
	r.mmio(8, 4, 0)
	r.mmio(12, 4, want&0xffffffff)
	r.mmio(8, 4, 1)
	r.mmio(12, 4, want>>32)
	r.mmio(ccDeviceStatusOff, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	require.NotZero(tb, read(ccDeviceStatusOff, 1)&virtio.StatusFeaturesOK, "FEATURES_OK kept")

	tmpl := r.kind.template()
	for i := uint64(0); i < kvmQSize; i++ {
		buf := kvmBufs + i*r.kind.stride()
		require.NoError(tb, mem.WriteAt(tmpl, buf))
		d := kvmTxRings + 16*i
		require.NoError(tb, mem.Write64(d, buf))
		require.NoError(tb, mem.Write32(d+8, uint32(len(tmpl))))
		require.NoError(tb, mem.Write16(kvmTxRings+0x1000+4+2*i, uint16(i)))
	}
	// No interrupts wanted (the flag is ignored with EVENT_IDX, where used_event
	// stays 0 and lets through one interrupt per 65536 chains).
	require.NoError(tb, mem.Write16(kvmTxRings+0x1000, virtio.AvailFNoInterrupt))
	for q, base := range []uint64{kvmRxRings, kvmTxRings} {
		r.mmio(22, 2, uint64(q))
		r.mmio(24, 2, kvmQSize)
		r.mmio(32, 8, base)
		r.mmio(40, 8, base+0x1000)
		r.mmio(48, 8, base+0x2000)
		r.mmio(28, 2, 1)
	}
	r.mmio(ccDeviceStatusOff, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
	require.True(tb, r.tr.Active(), "device activated (status %#x)", r.tr.Status())
}

// socketWindow is how many frames of kind k fit in the socket buffer opt of fd,
// counting generously for per-frame overhead: the credit window for the guest.
func socketWindow(tb testing.TB, fd, opt int, k txKind) uint64 {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt)
	require.NoError(tb, err)
	return uint64(v) / uint64(2*(kvmHdrLen+k.frameLen)+2048)
}

// packetSocket opens an AF_PACKET socket on the TAP that sees the frames the TAP
// took from us (the host stack receiving them) but not the host's own.
func packetSocket(tb testing.TB, name string) int {
	ifi, err := net.InterfaceByName(name)
	require.NoError(tb, err)
	proto := int(uint16(unix.ETH_P_ALL<<8 | unix.ETH_P_ALL>>8))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	require.NoError(tb, err)
	tb.Cleanup(func() { unix.Close(fd) })
	require.NoError(tb, unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1))
	require.NoError(tb, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20))
	require.NoError(tb, unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}))
	return fd
}

// rxResult is what the receiver saw.
type rxResult struct {
	frames, bytes uint64
	err           error
}

// receive drains the far end until want frames arrived (or stop closes), checking
// each frame: against the template when full, else only its sequence number. It
// grants the guest credit for window frames beyond those received.
func (r *txRig) receive(want uint64, full bool, stop <-chan struct{}) rxResult {
	var res rxResult
	tmpl := r.kind.template()
	hl := kvmHdrLen
	if r.tapDev != nil {
		tmpl, hl = tmpl[kvmHdrLen:], 0 // AF_PACKET sees the frame without the header
	}
	seqAt := hl + r.kind.seqOff()
	buf := make([]byte, 70000)
	pfd := []unix.PollFd{{Fd: int32(r.peer), Events: unix.POLLIN}}
	for res.frames < want {
		n, err := unix.Read(r.peer, buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			select {
			case <-stop:
				return res
			default:
			}
			if _, err := unix.Poll(pfd, 100); err != nil && !errors.Is(err, unix.EINTR) {
				res.err = err
				return res
			}
			continue
		}
		if err != nil {
			res.err = err
			return res
		}
		f := buf[:n]
		if r.tapDev != nil && (n < 14 || !bytes.Equal(f[6:12], kvmGuestMAC[:])) {
			continue // not ours
		}
		if n != len(tmpl) {
			res.err = fmt.Errorf("frame %d: %d bytes, want %d", res.frames, n, len(tmpl))
			return res
		}
		if seq := binary.LittleEndian.Uint32(f[seqAt:]); seq != uint32(res.frames) {
			res.err = fmt.Errorf("frame %d carries sequence number %d (lost or reordered frames)", res.frames, seq)
			return res
		}
		if full && (!bytes.Equal(f[:seqAt], tmpl[:seqAt]) || !bytes.Equal(f[seqAt+4:], tmpl[seqAt+4:])) {
			res.err = fmt.Errorf("frame %d differs from what the guest sent", res.frames)
			return res
		}
		res.frames++
		res.bytes += uint64(n - hl)
		atomic.StoreUint64(r.credit, res.frames+r.window)
	}
	return res
}

// txRun is the outcome of one guest run.
type txRun struct {
	frames  uint64
	elapsed time.Duration
	exits   uint64
	kicks   uint64
	// Guest waits: batches that found the ring full (the device is the bottleneck)
	// or lacked receiver credit.
	roomWaits, creditWaits uint64
	wakeups                uint64
	rx                     rxResult
	stats                  PairStats
	tapRx                  [2]uint64 // TAP rx_packets, rx_bytes during the run
	tapDrops               uint64
}

// workerStats returns the running pair's worker counters.
func (r *txRig) workerStats() notify.Stats {
	r.dev.mu.Lock()
	defer r.dev.mu.Unlock()
	require.Len(r.tb, r.dev.running, 1)
	return r.dev.running[0].worker.Stats()
}

func tapCounter(tb testing.TB, name, c string) uint64 {
	b, err := os.ReadFile("/sys/class/net/" + name + "/statistics/" + c)
	require.NoError(tb, err)
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	require.NoError(tb, err)
	return v
}

// run loads the guest program for frames chains in batches of batch and runs it; with
// a reader it also waits for the receiver to see every frame.
func (r *txRig) run(frames uint64, batch uint16, o rigOptions, full bool, timeout time.Duration) txRun {
	tb := r.tb
	spec := micro.VirtqTXSpec{
		Avail: kvmTxRings + 0x1000, Used: kvmTxRings + 0x2000, Size: kvmQSize, Batch: batch, Frames: frames,
		Doorbell: r.bar4 + kvmNotifyOff + 1*kvmNotifyMult, Queue: 1, EventIdx: o.eventIdx,
		Buf0: kvmBufs, Stride: r.kind.stride(), SeqOff: uint64(kvmHdrLen + r.kind.seqOff()),
		Counters: kvmCounters,
	}
	if o.reader {
		// The guest waits for credit for a whole batch: keep batches within the window
		// a small socket buffer allows (frames is a multiple of every smaller power of 2).
		require.NotZero(tb, r.window, "socket buffer holds no %s frame", r.kind.name)
		for uint64(spec.Batch) > r.window {
			spec.Batch /= 2
		}
		spec.Credit = kvmCredit
		atomic.StoreUint64(r.credit, r.window)
	}
	code, err := micro.VirtqTX(boot.MicroCodeAddr, spec)
	require.NoError(tb, err)
	require.NoError(tb, r.g.Mem.WriteAt(code, boot.MicroCodeAddr))
	var tapName string
	var rx0 [3]uint64
	if r.tapDev != nil {
		tapName = r.tapDev.Name()
		rx0 = [3]uint64{tapCounter(tb, tapName, "rx_packets"), tapCounter(tb, tapName, "rx_bytes"), tapCounter(tb, tapName, "rx_dropped")}
	}
	stop := make(chan struct{})
	rxDone := make(chan rxResult, 1)
	if o.reader {
		go func() { rxDone <- r.receive(frames, full, stop) }()
	}
	w0 := r.workerStats()
	start := time.Now()
	v, err := r.g.Run(timeout)
	var out txRun
	if o.reader {
		if err != nil {
			close(stop)
			out.rx = <-rxDone
		} else {
			select {
			case out.rx = <-rxDone:
			case <-time.After(timeout):
				close(stop)
				out.rx = <-rxDone
			}
		}
	}
	out.elapsed = time.Since(start)
	out.stats = r.dev.Stats()[0]
	require.NoError(tb, err, "guest: kicks %d, room waits %d, credit waits %d; device %+v; receiver %d frames, %v",
		r.g.Uint64(kvmCounters), r.g.Uint64(kvmCounters+8), r.g.Uint64(kvmCounters+16), out.stats, out.rx.frames, out.rx.err)
	require.Equal(tb, uint32(frames), v, "guest report")
	w1 := r.workerStats()
	out.frames = frames
	out.exits = r.g.Exits()
	out.kicks = r.g.Uint64(kvmCounters)
	out.roomWaits, out.creditWaits = r.g.Uint64(kvmCounters+8), r.g.Uint64(kvmCounters+16)
	out.wakeups = w1.Wakeups - w0.Wakeups
	if r.tapDev != nil {
		out.tapRx = [2]uint64{tapCounter(tb, tapName, "rx_packets") - rx0[0], tapCounter(tb, tapName, "rx_bytes") - rx0[1]}
		out.tapDrops = tapCounter(tb, tapName, "rx_dropped") - rx0[2]
	}
	return out
}

// kvmNotifyMult is the transport's queue_notify_off_multiplier: queue q's
// doorbell is at notify base + 4q.
const kvmNotifyMult = 4

// TestGuestTXKVM sends frames of every kind from a CPL3 guest through the device to a
// seqpacket peer and (with CAP_NET_ADMIN) a TAP, and checks every frame arrived intact
// and in order, the device counted them, and the doorbells never exited to Go.
func TestGuestTXKVM(t *testing.T) {
	kvmtest.Available(t)
	counts := map[string]uint64{"64B": 10_000, "1514B": 10_000, "GSO64K": 2_000}
	for _, backend := range []string{"seqpacket", "tap"} {
		for _, k := range txKinds {
			t.Run(backend+"/"+k.name, func(t *testing.T) {
				o := rigOptions{tap: backend == "tap", eventIdx: true, reader: true}
				if o.tap {
					if ok, why := tap.CanCreate(); !ok {
						t.Skip("TAP variant needs CAP_NET_ADMIN: " + why)
					}
				}
				r := newTXRig(t, k, o)
				n := counts[k.name]
				res := r.run(n, 16, o, true, 60*time.Second)
				r.check(res, true)
			})
		}
	}
	// Without EVENT_IDX the guest kicks unless the device set NO_NOTIFY.
	t.Run("seqpacket/64B/no-event-idx", func(t *testing.T) {
		o := rigOptions{reader: true}
		r := newTXRig(t, txKinds[0], o)
		res := r.run(10_000, 16, o, true, 60*time.Second)
		r.check(res, true)
	})
}

// check asserts the run delivered every frame and the counters agree.
func (r *txRig) check(res txRun, reader bool) {
	tb, k := r.tb, r.kind
	n := res.frames
	if reader {
		require.NoError(tb, res.rx.err)
		require.Equal(tb, n, res.rx.frames, "frames received")
		require.Equal(tb, n*uint64(k.frameLen), res.rx.bytes, "bytes received")
	}
	st := res.stats
	require.Equal(tb, n, st.TxPackets, "device TxPackets")
	require.Equal(tb, n*uint64(k.frameLen), st.TxBytes, "device TxBytes")
	require.Zero(tb, st.TxDropped, "device TxDropped")
	if k.gso {
		require.Equal(tb, n, st.TxGSO, "device TxGSO")
	} else {
		require.Zero(tb, st.TxGSO, "device TxGSO")
	}
	if r.tapDev != nil {
		require.Equal(tb, n, res.tapRx[0], "TAP rx_packets")
		require.Zero(tb, res.tapDrops, "TAP rx_dropped")
	}
	// The report is the run's only MMIO exit: doorbells go to the ioeventfd.
	require.Equal(tb, uint64(1), r.g.MMIOExits.Load(), "MMIO exits")
	require.Zero(tb, r.g.PIOExits.Load(), "PIO exits")
	require.NotZero(tb, res.kicks, "guest kicks")
	tb.Logf("%d frames of %d B in %v: %d kicks, %d worker wakeups, %d exits (%d signal), %d interrupts",
		n, k.frameLen, res.elapsed, res.kicks, res.wakeups, res.exits, r.g.OtherExits.Load(), st.Interrupts)
}

// BenchmarkGuestTX measures guest-to-host throughput through the device at native
// guest speed: a CPL3 micro guest feeds the TX ring, the pair's worker writes every
// frame to the backend. Per backend and frame kind it reports Mpps, Gbit/s (Ethernet
// frame bytes, no FCS), exits to Go, guest kicks and worker wakeups per frame. The
// seqpacket peer is drained by a receiver goroutine that checks sequence numbers and
// grants the guest credit (its cost is in the figures, as a peer process's would be).
// "tap" has no reader: the TAP's rx counters say what the kernel took; "tap-afpacket"
// adds an AF_PACKET reader on the TAP with credit, like the seqpacket peer. One op is
// kind.perOp frames.
func BenchmarkGuestTX(b *testing.B) {
	kvmtest.Available(b)
	for _, backend := range []string{"seqpacket", "tap", "tap-afpacket", "tap-hostwritev"} {
		for _, k := range txKinds {
			b.Run(backend+"/"+k.name, func(b *testing.B) {
				if backend == "tap-hostwritev" {
					benchHostWritev(b, k)
					return
				}
				o := rigOptions{tap: backend != "seqpacket", eventIdx: true, reader: backend != "tap"}
				if o.tap {
					if ok, why := tap.CanCreate(); !ok {
						b.Skip("TAP variant needs CAP_NET_ADMIN: " + why)
					}
				}
				r := newTXRig(b, k, o)
				frames := uint64(b.N) * uint64(k.perOp)
				b.ResetTimer()
				res := r.run(frames, 32, o, false, 10*time.Minute)
				b.StopTimer()
				st := res.stats
				delivered, dbytes := res.rx.frames, res.rx.bytes
				if !o.reader {
					delivered, dbytes = res.tapRx[0], res.tapRx[1]
				}
				require.NoError(b, res.rx.err, "receiver")
				require.Equal(b, frames, st.TxPackets, "device TxPackets (dropped %d)", st.TxDropped)
				require.Equal(b, frames, delivered, "frames delivered")
				sec := res.elapsed.Seconds()
				b.ReportMetric(float64(delivered)/sec/1e6, "Mpps")
				b.ReportMetric(float64(dbytes)*8/sec/1e9, "Gbit/s")
				b.ReportMetric(float64(res.exits)/float64(frames), "exits/frame")
				b.ReportMetric(float64(res.kicks)/float64(frames), "kicks/frame")
				b.ReportMetric(float64(res.wakeups)/float64(frames), "wakeups/frame")
				batches := float64(frames / 32)
				b.ReportMetric(float64(res.roomWaits)/batches, "ringfull/batch")
				b.ReportMetric(float64(res.creditWaits)/batches, "nocredit/batch")
			})
		}
	}
}

// benchHostWritev is the bound the TAP backend sets: the host writes the frames to a
// TAP queue with one writev each, cycling over as many buffers as the guest's ring
// has, with no guest and no device.
func benchHostWritev(b *testing.B, k txKind) {
	if ok, why := tap.CanCreate(); !ok {
		b.Skip("TAP variant needs CAP_NET_ADMIN: " + why)
	}
	name := fmt.Sprintf("ptvh%d%s", os.Getpid()%100000, strings.ToLower(k.name[:2]))
	tp, err := tap.Open(tap.Options{Name: name, VnetHdr: true})
	require.NoError(b, err)
	b.Cleanup(func() { tp.Close() })
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0o644)
	require.NoError(b, tp.SetVnetHdrSize(kvmHdrLen))
	q := tp.Queue(0)
	// The same footprint as the guest's buffers: a frame read from cache would
	// flatter the bound (a 64 KB frame is cheaper to copy when it stays in L2).
	tmpl := k.template()
	pool := make([]byte, kvmQSize*k.stride())
	for i := uint64(0); i < kvmQSize; i++ {
		copy(pool[i*k.stride():], tmpl)
	}
	iov := make([][]byte, 1)
	frames := uint64(b.N) * uint64(k.perOp)
	rx0 := tapCounter(b, name, "rx_packets")
	b.ResetTimer()
	start := time.Now()
	for i := uint64(0); i < frames; i++ {
		off := (i % kvmQSize) * k.stride()
		iov[0] = pool[off : off+uint64(len(tmpl))]
		n, err := q.Writev(iov)
		if err != nil || n != len(tmpl) {
			b.Fatalf("writev %d: %d bytes, %v", i, n, err)
		}
	}
	sec := time.Since(start).Seconds()
	b.StopTimer()
	require.Equal(b, frames, tapCounter(b, name, "rx_packets")-rx0, "TAP rx_packets")
	b.ReportMetric(float64(frames)/sec/1e6, "Mpps")
	b.ReportMetric(float64(frames)*float64(k.frameLen)*8/sec/1e9, "Gbit/s")
}
