package virtionet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/devices/virtio"
	"github.com/ptvmm/ptvmm/notify"
)

// Feature bits (virtio_net.h).
const (
	FCsum       = 1 << 0
	FGuestCsum  = 1 << 1
	FMTU        = 1 << 3
	FMAC        = 1 << 5
	FGuestTSO4  = 1 << 7
	FGuestTSO6  = 1 << 8
	FGuestECN   = 1 << 9
	FGuestUFO   = 1 << 10
	FHostTSO4   = 1 << 11
	FHostTSO6   = 1 << 12
	FMrgRxbuf   = 1 << 15
	FStatus     = 1 << 16
	FCtrlVQ     = 1 << 17
	FCtrlRx     = 1 << 18
	FMQ         = 1 << 22
	FCtrlMACSet = 1 << 23
)

// Config space layout.
const (
	cfgMAC      = 0
	cfgStatus   = 6
	cfgMaxPairs = 8
	cfgMTU      = 10
	configSize  = 12

	StatusLinkUp = 1
)

// Header fields.
const (
	hdrNeedsCsum  = 1
	gsoNone       = 0
	legacyHdrLen  = 10
	modernHdrLen  = 12
	maxGSOFrame   = 65535 + 14 + 4
	maxIOV        = 1024
	defaultMTU    = 1500
	DefaultQSize  = 256
	maxPairs      = 16
	maxCtrlLength = 1 << 16
)

// Offloader is the device-level part of a backend that passes virtio-net headers
// through (a TAP with IFF_VNET_HDR).
type Offloader interface {
	SetVnetHdrSize(n int) error
	SetOffload(flags int) error
}

// VectorPort is a port that moves one frame straight between the kernel and a list
// of buffers (guest memory): no copy.
type VectorPort interface {
	Readv(iovs [][]byte) (int, error)
	Writev(iovs [][]byte) (int, error)
}

// Config describes one NIC.
type Config struct {
	MAC [6]byte
	// Ports are the backend endpoints, one per queue pair (len = number of pairs).
	Ports []backends.Port
	// VnetHdr: the ports carry a virtio-net header in front of every frame (a TAP
	// with IFF_VNET_HDR), so checksum and segmentation offloads are offered.
	VnetHdr bool
	// Offloads, if set, is told the header size and guest offloads at activation.
	Offloads Offloader
	// NoOffloads withholds the checksum and TSO features even with VnetHdr (for
	// measuring what they are worth).
	NoOffloads bool
	// MTU, if non-zero, is offered to the guest (VIRTIO_NET_F_MTU), up to 65535.
	MTU int
	// QueueSize is the maximum size of every queue (default 256).
	QueueSize uint16
	// Mode is how the queue-pair workers wait (default notify.Block); Spin is the
	// polling window of notify.Adaptive (notify.DefaultSpin if zero).
	Mode notify.Mode
	Spin time.Duration
	// Logf receives one line per notable event (link changes, broken rings).
	Logf func(format string, args ...any)
}

// PairStats are one queue pair's counters (monotonic).
type PairStats struct {
	TxPackets, TxBytes, TxDropped, TxGSO uint64
	RxPackets, RxBytes, RxDropped, RxGSO uint64
	RxNoBuffers, Interrupts              uint64
	// RxBadBuffers counts receive chains returned unused because they could hold no
	// frame (no writable bytes; without mergeable buffers, fewer than a header and an
	// Ethernet header).
	RxBadBuffers uint64
	// TxKicks and RxKicks are the notifications the TX and RX queues received: each
	// driver doorbell write is one (under KVM an ioeventfd signal), counted when the
	// worker reads the queue's eventfd. A driver told to poll (notifications
	// suppressed) rings less, so these fall.
	TxKicks, RxKicks uint64
}

// Device is a virtio-net device model (virtio.Device).
//
// Concurrency: the transport calls the virtio.Device methods from vCPU goroutines,
// serialised. Each active queue pair is served by its own notify.Worker, which owns
// the pair's queues and backend port; pair 0's worker also serves the control queue.
// SetLink, Stats and the filter state may be used from any goroutine.
type Device struct {
	cfg   Config
	pairs int
	mtu   int

	transport atomic.Pointer[virtio.Transport]
	linkUp    atomic.Bool
	gone      []atomic.Bool // per port: the backend vanished

	// Receive filter, set through the control queue.
	filterMu    sync.RWMutex
	promisc     bool
	allmulti    bool
	uniTable    [][6]byte
	multiTable  [][6]byte
	activePairs atomic.Int32

	mu      sync.Mutex
	running []*pair
	stats   []pairCounters
}

type pairCounters struct {
	txPackets, txBytes, txDropped, txGSO  atomic.Uint64
	rxPackets, rxBytes, rxDropped, rxGSO  atomic.Uint64
	rxNoBuffers, interrupts, rxBadBuffers atomic.Uint64
	txKicks, rxKicks                      atomic.Uint64
}

// New creates the device. Attach it to a transport with SetTransport.
func New(cfg Config) (*Device, error) {
	n := len(cfg.Ports)
	if n < 1 || n > maxPairs {
		return nil, fmt.Errorf("virtionet: %d queue pairs (1..%d)", n, maxPairs)
	}
	if cfg.MTU < 0 || cfg.MTU > 65535 || (cfg.MTU != 0 && cfg.MTU < 68) {
		return nil, fmt.Errorf("virtionet: MTU %d (68..65535)", cfg.MTU)
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQSize
	}
	if cfg.QueueSize > virtio.MaxQueueSize || cfg.QueueSize&(cfg.QueueSize-1) != 0 {
		return nil, fmt.Errorf("virtionet: queue size %d is not a power of two up to %d", cfg.QueueSize, virtio.MaxQueueSize)
	}
	d := &Device{cfg: cfg, pairs: n, mtu: cfg.MTU, gone: make([]atomic.Bool, n), stats: make([]pairCounters, n)}
	if d.mtu == 0 {
		d.mtu = defaultMTU
	}
	d.linkUp.Store(true)
	d.resetFilter()
	return d, nil
}

// SetTransport connects the device to its transport (for interrupts and resets).
func (d *Device) SetTransport(t *virtio.Transport) { d.transport.Store(t) }

func (d *Device) logf(format string, args ...any) {
	if d.cfg.Logf != nil {
		d.cfg.Logf(format, args...)
	}
}

func (d *Device) resetFilter() {
	d.filterMu.Lock()
	d.promisc, d.allmulti, d.uniTable, d.multiTable = true, false, nil, nil
	d.filterMu.Unlock()
	d.activePairs.Store(1)
}

// Type is virtio-net.
func (d *Device) Type() uint16 { return virtio.DeviceTypeNet }

// Features offered to the driver.
func (d *Device) Features() uint64 {
	f := uint64(FMAC | FStatus | FMrgRxbuf | FCtrlVQ | FCtrlRx | virtio.FAnyLayout)
	if d.pairs > 1 {
		f |= FMQ
	}
	if d.cfg.MTU != 0 {
		f |= FMTU
	}
	if d.cfg.VnetHdr && !d.cfg.NoOffloads {
		f |= FCsum | FGuestCsum | FHostTSO4 | FHostTSO6 | FGuestTSO4 | FGuestTSO6
	}
	return f
}

// NumQueues is rx/tx per pair plus the control queue.
func (d *Device) NumQueues() int { return 2*d.pairs + 1 }

// QueueMax is the configured queue size (the control queue is small).
func (d *Device) QueueMax(i int) uint16 {
	if i == 2*d.pairs {
		return 64
	}
	return d.cfg.QueueSize
}

// ConfigSize covers mac, status, max_virtqueue_pairs and mtu.
func (d *Device) ConfigSize() int { return configSize }

// ReadConfig reads the device configuration.
func (d *Device) ReadConfig(off int, data []byte) {
	var c [configSize]byte
	mac := d.MAC()
	copy(c[cfgMAC:], mac[:])
	if d.linkUp.Load() {
		binary.LittleEndian.PutUint16(c[cfgStatus:], StatusLinkUp)
	}
	binary.LittleEndian.PutUint16(c[cfgMaxPairs:], uint16(d.pairs))
	binary.LittleEndian.PutUint16(c[cfgMTU:], uint16(d.mtu))
	if off >= 0 && off < configSize {
		copy(data, c[off:])
	}
}

// WriteConfig: the legacy driver may write the MAC; the rest is read-only.
func (d *Device) WriteConfig(off int, data []byte) {
	if off >= cfgMAC && off+len(data) <= cfgMAC+6 {
		d.filterMu.Lock()
		copy(d.cfg.MAC[off:], data)
		d.filterMu.Unlock()
	}
}

// MAC returns the current MAC address.
func (d *Device) MAC() [6]byte {
	d.filterMu.RLock()
	defer d.filterMu.RUnlock()
	return d.cfg.MAC
}

// LinkUp reports the link status the guest sees.
func (d *Device) LinkUp() bool { return d.linkUp.Load() }

// SetLink changes the link status and tells the guest (configuration interrupt).
func (d *Device) SetLink(up bool) {
	if d.linkUp.Swap(up) == up {
		return
	}
	if t := d.transport.Load(); t != nil {
		t.ConfigChanged()
	}
}

// Stats returns every pair's counters.
func (d *Device) Stats() []PairStats {
	out := make([]PairStats, len(d.stats))
	for i := range d.stats {
		c := &d.stats[i]
		out[i] = PairStats{
			TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(), TxDropped: c.txDropped.Load(), TxGSO: c.txGSO.Load(),
			RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(), RxDropped: c.rxDropped.Load(), RxGSO: c.rxGSO.Load(),
			RxNoBuffers: c.rxNoBuffers.Load(), Interrupts: c.interrupts.Load(), RxBadBuffers: c.rxBadBuffers.Load(),
			TxKicks: c.txKicks.Load(), RxKicks: c.rxKicks.Load(),
		}
	}
	return out
}

// hdrLen is the virtio-net header size the driver uses.
func hdrLen(features uint64) int {
	if features&(virtio.FVersion1|FMrgRxbuf) != 0 {
		return modernHdrLen
	}
	return legacyHdrLen
}

// tunOffloads maps the guest's receive offloads to TUN_F_* flags.
func tunOffloads(features uint64) int {
	var f int
	if features&FGuestCsum != 0 {
		f |= 0x01
		if features&FGuestTSO4 != 0 {
			f |= 0x02
		}
		if features&FGuestTSO6 != 0 {
			f |= 0x04
		}
		if features&FGuestECN != 0 {
			f |= 0x08
		}
		if features&FGuestUFO != 0 {
			f |= 0x10
		}
	}
	return f
}

// Activate starts one worker per queue pair.
func (d *Device) Activate(a *virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	hl := hdrLen(a.Features)
	if d.cfg.VnetHdr && d.cfg.Offloads != nil {
		if err := d.cfg.Offloads.SetVnetHdrSize(hl); err != nil {
			return err
		}
		if err := d.cfg.Offloads.SetOffload(tunOffloads(a.Features)); err != nil {
			return err
		}
	}
	var ctrl *virtio.QueueHandle
	if a.Features&FCtrlVQ != 0 && len(a.Queues) > 2*d.pairs {
		ctrl = a.Queues[2*d.pairs]
	}
	for i := 0; i < d.pairs; i++ {
		rx, tx := a.Queues[2*i], a.Queues[2*i+1]
		if rx == nil || tx == nil {
			continue
		}
		p := newPair(d, i, rx, tx, a.Features, hl)
		if i == 0 {
			p.ctrl = ctrl
		}
		if err := p.start(); err != nil {
			d.stopLocked()
			return err
		}
		d.running = append(d.running, p)
	}
	return nil
}

// Reset stops every worker; the ports stay open for the next activation.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopLocked()
	d.resetFilter()
}

func (d *Device) stopLocked() {
	for _, p := range d.running {
		p.stop()
	}
	d.running = nil
}

// Close stops the device and closes its ports.
func (d *Device) Close() error {
	d.Reset()
	var err error
	for _, p := range d.cfg.Ports {
		err = errors.Join(err, p.Close())
	}
	return err
}

// portGone marks port i dead after the backend vanished: link down, one log line.
func (d *Device) portGone(i int, err error) {
	if d.gone[i].Swap(true) {
		return
	}
	mac := d.MAC()
	d.logf("virtionet %s: backend %s gone, link down: %v", macString(mac), d.cfg.Ports[i].Name(), err)
	d.SetLink(false)
}

// accept applies the receive filter to a frame's destination MAC.
func (d *Device) accept(m [6]byte) bool {
	d.filterMu.RLock()
	defer d.filterMu.RUnlock()
	if d.promisc {
		return true
	}
	if m == [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} {
		return true
	}
	if m[0]&1 != 0 {
		if d.allmulti {
			return true
		}
		for _, e := range d.multiTable {
			if e == m {
				return true
			}
		}
		return false
	}
	if m == d.cfg.MAC {
		return true
	}
	for _, e := range d.uniTable {
		if e == m {
			return true
		}
	}
	return false
}

func macString(m [6]byte) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}
