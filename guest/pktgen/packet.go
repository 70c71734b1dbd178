package pktgen

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// A PacketPort is a network interface without netmap support (a virtio-net NIC in a
// guest, eth0) driven as a netmap ring pair through a raw packet socket (AF_PACKET,
// SOCK_RAW), so that pktgen measures it with the same code it runs over ptnet. The
// rings are a private netmap port whose krings' syncs talk to the socket: txsync
// hands the frames between hwcur and head to the kernel with one sendmmsg whose
// iovecs point at the slots' buffers (the kernel copies each frame once, into its
// socket buffer, as any raw-socket sender pays); rxsync fills free slots with one
// recvmmsg. The socket is non-blocking: a full socket send buffer leaves frames in
// the ring (flow control, as netmap's txsync leaves what the NIC cannot take), and
// Wait polls the socket. The socket goes through the interface's queueing
// discipline, so the guest's kernel never drops a frame for a full device queue;
// its send buffer bounds what is in flight.
//
// The netmap counters mean: kicks, sendmmsg calls that handed frames over (a
// system call is this path's doorbell); interrupts, polls that woke with the socket
// ready; waits, polls.
//
// Concurrency: TxRing and RxRing may each be used by one goroutine at a time (the
// netmap rule: one user per ring). Close once, after.
type PacketPort struct {
	fd     int
	name   string
	np     *netmap.Port
	tx, rx *PacketRing
}

// PacketSlots is how many slots each of a PacketPort's rings has.
const PacketSlots = 1024

// packetBatch bounds the frames of one sendmmsg or recvmmsg.
const packetBatch = 256

// packetMaxFrags bounds the slots of one frame sent (NS_MOREFRAG chains).
const packetMaxFrags = 8

// OpenPacket opens a raw packet socket on interface iface (which must be up) that
// sends any frame and receives pktgen's EtherType only, never the frames it sent
// itself (so a ping does not see its own frame). It needs CAP_NET_RAW.
func OpenPacket(iface string) (*PacketPort, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("pktgen: packet socket on %s: %w", iface, err)
	}
	// Protocol 0 at creation: nothing is queued before the bind names the interface
	// and the EtherType.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("pktgen: packet socket on %s: %w (needs CAP_NET_RAW)", iface, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pktgen: packet socket on %s: PACKET_IGNORE_OUTGOING: %w", iface, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(EtherType), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pktgen: bind packet socket to %s: %w", iface, err)
	}
	// A receive buffer for a few ring's worth of frames (root may exceed rmem_max):
	// bursts must not overflow it before the reader runs. Best effort.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	p, err := newPacketPort(fd, iface)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return p, nil
}

// htons is v in network byte order.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// newPacketPort puts rings on a datagram socket fd (non-blocking; one frame per
// datagram), which the port owns once this succeeds.
func newPacketPort(fd int, name string) (*PacketPort, error) {
	np, err := netmap.NewPort(netmap.PortConfig{Name: "packet:" + name, TxSlots: PacketSlots, RxSlots: PacketSlots})
	if err != nil {
		return nil, fmt.Errorf("pktgen: rings for %s: %w", name, err)
	}
	p := &PacketPort{fd: fd, name: name, np: np}
	p.tx = &PacketRing{p: p, k: np.TxRing(0), tx: true, batch: newMmsgBatch(packetBatch, packetBatch*packetMaxFrags),
		frags: make([]netmap.Frag, packetBatch*packetMaxFrags), ends: make([]uint32, 0, packetBatch)}
	p.rx = &PacketRing{p: p, k: np.RxRing(0), batch: newMmsgBatch(packetBatch, packetBatch), slots: make([]uint32, packetBatch)}
	for _, r := range []*PacketRing{p.tx, p.rx} {
		r.ring = np.UserRing(r.k)
	}
	p.tx.k.SetSync(p.tx.txsync)
	return p, nil
}

// Name is the interface's name.
func (p *PacketPort) Name() string { return p.name }

// TxRing is the ring pktgen sends on.
func (p *PacketPort) TxRing() *PacketRing { return p.tx }

// RxRing is the ring pktgen receives on.
func (p *PacketPort) RxRing() *PacketRing { return p.rx }

// Close closes the socket and frees the rings.
func (p *PacketPort) Close() error {
	return errors.Join(unix.Close(p.fd), p.np.Close())
}

// PacketRing is one direction of a PacketPort as a pktgen Ring.
//
// Concurrency: one goroutine at a time; Stats from any goroutine.
type PacketRing struct {
	p     *PacketPort
	k     *netmap.Kring
	ring  *netmap.Ring
	tx    bool
	batch *mmsgBatch
	frags []netmap.Frag
	bufs  [][]byte // tx: one frame's buffers
	ends  []uint32 // tx: the slot after each message's frame
	slots []uint32 // rx: the slot each message of the batch fills
	// nobufs: the last send failed for want of memory (ENOBUFS), which poll does not
	// wait for.
	nobufs bool

	syncs, kicks, waits, irqs, errs atomic.Uint64
}

var _ Ring = (*PacketRing)(nil)

// Ring is the netmap user view (pktgen fills and reads its slots).
func (r *PacketRing) Ring() *netmap.Ring { return r.ring }

// Stats are the ring's counters (see PacketPort for what they count).
func (r *PacketRing) Stats() netmap.DriverRingStats {
	return netmap.DriverRingStats{Syncs: r.syncs.Load(), Kicks: r.kicks.Load(), Waits: r.waits.Load(),
		Interrupts: r.irqs.Load(), Errors: r.errs.Load()}
}

// Sync is txsync (send the frames between hwcur and head) or rxsync (release the
// slots before head, receive into the free ones). Head and cur from the ring's user
// pass netmap's prologue checks; bad ones reinitialise the ring (netmap.ErrRingReinit).
func (r *PacketRing) Sync(flags netmap.SyncFlags) error {
	r.syncs.Add(1)
	if r.tx {
		return r.k.Sync(flags)
	}
	// Release first (a sync), fill outside the kring's lock (RxReserve, RxComplete),
	// then publish the new tail (a second sync; head and cur are unchanged).
	if err := r.k.Sync(flags); err != nil {
		return err
	}
	rerr := r.receive()
	return errors.Join(rerr, r.k.Sync(flags))
}

func transient(err error) bool {
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EINTR)
}

// txsync runs under the TX kring's lock: it scans whole frames from hwcur, sends
// them, and completes what the kernel took. Rounds are bounded by the ring size.
func (r *PacketRing) txsync(k *netmap.Kring, _ netmap.SyncFlags) error {
	pos := k.HwCur()
	r.nobufs = false
	for range k.NumSlots()/packetBatch + 2 {
		n, next := k.TxScan(pos, r.frags)
		if n == 0 {
			if next == pos {
				return nil
			}
			k.TxDone(next) // only skipped (bad) frames
			pos = next
			continue
		}
		lead, all := r.group(k, n)
		if len(r.ends) == 0 {
			if lead == pos {
				return nil // cannot happen: TxScan found a frame and group took none
			}
			k.TxDone(lead) // empty frames only
			pos = lead
			continue
		}
		sent, err := r.batch.call(unix.SYS_SENDMMSG, r.p.fd, unix.MSG_DONTWAIT)
		done := lead
		if sent > 0 {
			r.kicks.Add(1)
			done = r.ends[sent-1]
			if sent == len(r.ends) && all {
				done = next // also the bad frames TxScan skipped after the last one
			}
		}
		if err != nil && !transient(err) {
			// The kernel refuses the frame (too long for the MTU, link down): drop it,
			// so the ring does not wedge, and say why.
			r.errs.Add(1)
			done = r.ends[0]
		}
		k.TxDone(done)
		pos = done
		switch {
		case err != nil && transient(err):
			r.nobufs = errors.Is(err, unix.ENOBUFS)
			return nil // the rest stays in the ring
		case err != nil:
			return fmt.Errorf("pktgen: send on %s: %w", r.p.name, err)
		case sent < len(r.ends):
			return nil // the socket's send buffer is full
		}
	}
	return nil
}

// group turns the n frags TxScan returned into messages, one per frame, and sets
// r.ends[i] to the slot after message i's frame. An empty frame (every slot of
// length 0) is dropped and counted: it is completed with the message before it, or,
// before the first message, by the slot lead returned. all says every frag found
// its message (else the batch filled up first).
func (r *PacketRing) group(k *netmap.Kring, n int) (lead uint32, all bool) {
	r.batch.reset()
	r.ends = r.ends[:0]
	lead = r.frags[0].Slot
	for i := 0; i < n; {
		j := i
		for j < n-1 && r.frags[j].Flags&netmap.NSMoreFrag != 0 {
			j++
		}
		end := k.Next(r.frags[j].Slot)
		r.bufs = r.bufs[:0]
		for _, f := range r.frags[i : j+1] {
			if len(f.Data) > 0 {
				r.bufs = append(r.bufs, f.Data)
			}
		}
		switch {
		case len(r.bufs) == 0:
			r.errs.Add(1)
			if len(r.ends) == 0 {
				lead = end
			} else {
				r.ends[len(r.ends)-1] = end
			}
		case r.batch.add(r.bufs...):
			r.ends = append(r.ends, end)
		default:
			return lead, false // the batch is full: the rest goes in the next round
		}
		i = j + 1
	}
	return lead, true
}

// receive fills free RX slots from the socket until it has nothing queued or the
// ring is full (bounded by the ring size).
func (r *PacketRing) receive() error {
	k := r.k
	for range k.NumSlots()/packetBatch + 2 {
		l := k.RxReserve(packetBatch)
		if l.N == 0 {
			return nil
		}
		r.batch.reset()
		r.slots = r.slots[:0]
		for i := range l.N {
			pos := (l.Start + i) % k.NumSlots()
			if b := k.RxSlotBuf(pos); b != nil && r.batch.add(b) {
				r.slots = append(r.slots, i)
			}
		}
		got, err := r.batch.call(unix.SYS_RECVMMSG, r.p.fd, unix.MSG_DONTWAIT)
		if err != nil && !transient(err) {
			k.RxComplete(l, 0)
			return fmt.Errorf("pktgen: receive on %s: %w", r.p.name, err)
		}
		// Slots up to the one the last message filled are used; a slot with a bad
		// buffer among them becomes an empty frame (pktgen counts it as not ours).
		used := uint32(0)
		next := 0
		for i := range l.N {
			if next >= got {
				break
			}
			pos := (l.Start + i) % k.NumSlots()
			if next < len(r.slots) && r.slots[next] == i {
				b := k.RxSlotBuf(pos)
				n := min(r.batch.msgLen(next), len(b))
				if r.batch.truncated(next) {
					r.errs.Add(1)
				}
				k.SetSlotLen(pos, uint16(n), 0)
				next++
			} else {
				r.errs.Add(1)
				k.SetSlotLen(pos, 0, 0)
			}
			used = i + 1
		}
		k.RxComplete(l, used)
		if got < len(r.slots) || got == 0 {
			return nil
		}
	}
	return nil
}

// ready says the ring's user can move: TX has a free slot, RX a frame.
func (r *PacketRing) ready() bool {
	if r.tx {
		return r.ring.Space() > 0
	}
	return !r.ring.Empty()
}

// Wait syncs and, if the ring still cannot move, polls the socket (TX: room in its
// send buffer, RX: a frame) up to timeout, then syncs again. It reports whether the
// ring can move.
func (r *PacketRing) Wait(timeout time.Duration) (bool, error) {
	if err := r.Sync(0); err != nil || r.ready() {
		return err == nil, err
	}
	r.waits.Add(1)
	if r.tx && r.nobufs {
		// The device is out of memory or queue, which poll does not wait for.
		time.Sleep(min(timeout, 200*time.Microsecond))
	} else {
		ev := int16(unix.POLLIN)
		if r.tx {
			ev = unix.POLLOUT
		}
		ts := unix.NsecToTimespec(max(timeout, 0).Nanoseconds())
		fds := []unix.PollFd{{Fd: int32(r.p.fd), Events: ev}}
		n, err := unix.Ppoll(fds, &ts, nil)
		switch {
		case err != nil && !errors.Is(err, unix.EINTR):
			return false, fmt.Errorf("pktgen: poll %s: %w", r.p.name, err)
		case n > 0 && fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0:
			return false, fmt.Errorf("pktgen: poll %s: socket error (revents %#x)", r.p.name, fds[0].Revents)
		case n > 0:
			r.irqs.Add(1)
		}
	}
	if err := r.Sync(0); err != nil {
		return false, err
	}
	return r.ready(), nil
}
