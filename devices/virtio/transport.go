package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// PCI identity of a transitional virtio device.
const (
	VendorID          = 0x1af4
	TransitionalBase  = 0x1000 // transitional device ID = 0x1000 + type - 1 for net/block
	ModernBase        = 0x1040
	DeviceTypeNet     = 1
	classNetwork      = 0x020000
	NoVector          = 0xffff
	legacyQueueAlign  = 4096
	notifyMultiplier  = 4
	legacyConfigNoMSI = 20
	legacyConfigMSI   = 24
)

// Device status bits.
const (
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 0x40
	StatusFailed      = 0x80
)

// Generic feature bits.
const (
	FNotifyOnEmpty = 1 << 24
	FAnyLayout     = 1 << 27
	FIndirectDesc  = 1 << 28
	FEventIdx      = 1 << 29
	FVersion1      = 1 << 32
)

// ISR bits.
const (
	isrQueue  = 1
	isrConfig = 2
)

// Legacy register offsets in BAR0 (I/O).
const (
	legHostFeatures  = 0
	legGuestFeatures = 4
	legQueuePFN      = 8
	legQueueNum      = 12
	legQueueSel      = 14
	legQueueNotify   = 16
	legStatus        = 18
	legISR           = 19
	legConfigVector  = 20
	legQueueVector   = 22
)

// Modern layout inside BAR4 (64-bit memory) and the MSI-X BAR.
const (
	modernBAR    = 4
	msixBAR      = 1
	commonOffset = 0x0000
	commonSize   = 0x40
	isrOffset    = 0x1000
	deviceOffset = 0x2000
	notifyOffset = 0x3000
	modernSize   = 0x4000
)

// Common configuration offsets.
const (
	ccDeviceFeatureSel = 0
	ccDeviceFeature    = 4
	ccDriverFeatureSel = 8
	ccDriverFeature    = 12
	ccMSIXConfig       = 16
	ccNumQueues        = 18
	ccDeviceStatus     = 20
	ccConfigGeneration = 21
	ccQueueSelect      = 22
	ccQueueSize        = 24
	ccQueueMSIXVector  = 26
	ccQueueEnable      = 28
	ccQueueNotifyOff   = 30
	ccQueueDesc        = 32
	ccQueueDriver      = 40
	ccQueueDevice      = 48
)

// Device is a virtio device model behind the transport.
//
// Concurrency: ReadConfig/WriteConfig run on vCPU goroutines under the transport's
// lock; Activate and Reset run there too, never concurrently with each other.
type Device interface {
	// Type is the virtio device ID (1 = net).
	Type() uint16
	// Features are the device feature bits offered (the transport adds the ring ones
	// it implements: VERSION_1, EVENT_IDX, INDIRECT_DESC).
	Features() uint64
	// NumQueues is the number of virtqueues; QueueMax the largest size of each.
	NumQueues() int
	QueueMax(i int) uint16
	// ConfigSize is the size of the device-specific configuration.
	ConfigSize() int
	ReadConfig(off int, data []byte)
	WriteConfig(off int, data []byte)
	// Activate starts the device when the driver sets DRIVER_OK. Queues[i] is nil for
	// a queue the driver did not enable.
	Activate(a *Activation) error
	// Reset stops all device activity on the queues; when it returns no worker
	// touches them any more.
	Reset()
}

// Activation is what the driver negotiated.
type Activation struct {
	Features uint64
	Legacy   bool // driven through the legacy I/O BAR (no VERSION_1)
	Mem      *memory.Memory
	Queues   []*QueueHandle
}

// QueueHandle is one enabled queue with its notification plumbing.
//
// Concurrency: the Queue belongs to the device's worker; Interrupt may be called from
// any goroutine.
type QueueHandle struct {
	*Queue
	Index int
	// Kicks are the eventfds the driver's notifications for this queue signal
	// (modern and legacy notify addresses). The worker waits on all of them.
	Kicks []*notify.EventFD
	t     *Transport
}

// Interrupt notifies the driver that the queue has used entries: the queue's MSI-X
// vector when MSI-X is on, else ISR bit 0 and INTx. A handle made outside a transport
// (a test driving a device directly) has nowhere to send it: nil.
func (h *QueueHandle) Interrupt() error {
	if h.t == nil {
		return nil
	}
	return h.t.queueInterrupt(h.Index)
}

// Bell is a doorbell for a queue's notify address (notify.Doorbell implements it).
type Bell interface {
	Event() *notify.EventFD
	Move(addr uint64, enabled bool) error
	Close() error
}

// BellMaker registers a doorbell (a KVM ioeventfd). Without one, notify writes trap
// to the VMM and the transport signals the queue's eventfd itself.
type BellMaker func(notify.DoorbellSpec) (Bell, error)

// TransportConfig wires a transport.
type TransportConfig struct {
	Mem    *memory.Memory
	Device Device
	// Bells creates ioeventfds for the notify addresses; nil traps them.
	Bells BellMaker
	// MSIX routes the device's MSI-X vectors (1 + NumQueues of them); nil: no MSI-X.
	MSIX pci.MSIRouter
	// Intx is the INTx line; nil: no INTx.
	Intx pci.IntxLine
	// Logf, if set, receives one line per device-level event (needs reset, reset).
	Logf func(format string, args ...any)
}

type queueRegs struct {
	size              uint16
	enable            bool
	desc, avail, used uint64
	pfn               uint32
	vector            atomic.Uint32
	kick              *notify.EventFD // signalled by trapped notify writes
	bells             [2]Bell         // legacy PIO, modern MMIO
}

// Transport is a virtio-pci function (transitional: modern registers in BAR4, legacy
// registers in the BAR0 I/O window, MSI-X table in BAR1).
//
// Concurrency: register accesses come from vCPU goroutines and are serialised by mu.
// Interrupt paths (queue and config interrupts, NeedsReset) are lock-free so that
// workers never wait on a vCPU and Device.Reset may stop workers under mu.
type Transport struct {
	cfg TransportConfig
	dev Device
	fn  atomic.Pointer[pci.Function]

	mu          sync.Mutex
	devFeatures uint64
	drvFeatures uint64
	devFeatSel  uint32
	drvFeatSel  uint32
	queueSel    uint16
	queues      []queueRegs
	active      bool
	legacyUsed  bool

	generation atomic.Uint32 // config_generation, bumped by ConfigChanged
	lastFeat   atomic.Uint64 // features of the last activation, kept across resets

	status    atomic.Uint32
	isr       atomic.Uint32
	cfgVector atomic.Uint32
	intxLevel atomic.Bool
}

// NewTransport creates the transport for cfg.Device. Register it with Spec and Attach.
func NewTransport(cfg TransportConfig) (*Transport, error) {
	if cfg.Device == nil || cfg.Mem == nil {
		return nil, errors.New("virtio: transport needs a device and guest memory")
	}
	n := cfg.Device.NumQueues()
	if n < 1 || n > 1024 {
		return nil, fmt.Errorf("virtio: %d queues (1..1024)", n)
	}
	t := &Transport{cfg: cfg, dev: cfg.Device, queues: make([]queueRegs, n)}
	t.devFeatures = cfg.Device.Features() | FVersion1 | FEventIdx | FIndirectDesc
	for i := range t.queues {
		ev, err := notify.NewEventFD()
		if err != nil {
			t.Close()
			return nil, err
		}
		t.queues[i].kick = ev
	}
	t.resetLocked()
	return t, nil
}

// Spec is the PCI function to add to the root.
func (t *Transport) Spec() pci.Spec {
	typ := t.dev.Type()
	s := pci.Spec{
		VendorID:    VendorID,
		DeviceID:    TransitionalBase + typ - 1,
		SubVendorID: VendorID,
		SubsystemID: typ,
		Revision:    0,
		Class:       classNetwork,
		Intx:        t.cfg.Intx,
		Caps:        t.VendorCaps(),
	}
	legacySize := uint64(4)
	for legacySize < uint64(legacyConfigMSI+t.dev.ConfigSize()) {
		legacySize <<= 1
	}
	s.BARs[0] = &pci.BAR{Kind: pci.BARIO, Size: legacySize, Device: legacyRegs{t}, Moved: t.movedLegacy}
	s.BARs[modernBAR] = &pci.BAR{Kind: pci.BARMem64, Size: modernSize, Device: modernRegs{t}, Moved: t.movedModern}
	if t.cfg.MSIX != nil {
		s.BARs[msixBAR] = &pci.BAR{Kind: pci.BARMem32, Size: 0x1000}
		s.MSIX = &pci.MSIXSpec{Vectors: 1 + len(t.queues), BAR: msixBAR, TableOffset: 0, PBAOffset: 0x800, Router: t.cfg.MSIX}
	}
	return s
}

// Virtio PCI capability (struct virtio_pci_cap) types.
const (
	capVendor    = 0x09
	capCommonCfg = 1
	capNotifyCfg = 2
	capISRCfg    = 3
	capDeviceCfg = 4
)

// VendorCaps returns the virtio_pci_cap structures (capability ID 0x09) that point a
// modern driver at the registers in BAR4: common, notify, ISR and device
// configuration, in that order. Spec includes them; pci chains them after MSI-X.
func (t *Transport) VendorCaps() []pci.Capability {
	// Body starts at cap_len (byte 2 of the structure); pci fills cap_vndr and cap_next.
	mk := func(typ uint8, off, ln uint32, extra int) pci.Capability {
		b := make([]byte, 14+extra)
		b[0], b[1], b[2] = byte(16+extra), typ, modernBAR
		binary.LittleEndian.PutUint32(b[6:], off)
		binary.LittleEndian.PutUint32(b[10:], ln)
		return pci.Capability{ID: capVendor, Body: b}
	}
	// Queue q's doorbell is at notifyOffset + queue_notify_off(q) * notifyMultiplier,
	// with queue_notify_off(q) = q: the addresses Attach and movedModern give the
	// ioeventfds and the trapped path in modernRegs.Write decodes.
	notifyCap := mk(capNotifyCfg, notifyOffset, uint32(len(t.queues))*notifyMultiplier, 4)
	binary.LittleEndian.PutUint32(notifyCap.Body[14:], notifyMultiplier)
	return []pci.Capability{
		mk(capCommonCfg, commonOffset, commonSize, 0),
		notifyCap,
		mk(capISRCfg, isrOffset, 1, 0),
		mk(capDeviceCfg, deviceOffset, uint32(t.dev.ConfigSize()), 0),
	}
}

// Attach connects the transport to the function the root created from Spec, and
// places the doorbells at the BAR addresses.
func (t *Transport) Attach(f *pci.Function) error {
	t.fn.Store(f)
	if t.cfg.Bells == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	legacyBase, legacyOn := f.BARAddr(0)
	modernBase, modernOn := f.BARAddr(modernBAR)
	for i := range t.queues {
		q := &t.queues[i]
		specs := [2]notify.DoorbellSpec{
			{Addr: legacyBase + legQueueNotify, Len: 2, PIO: true, DataMatch: true, Data: uint64(i)},
			{Addr: modernBase + notifyOffset + uint64(i)*notifyMultiplier, Len: 2},
		}
		on := [2]bool{legacyOn, modernOn}
		for k := range specs {
			b, err := t.cfg.Bells(specs[k])
			if err != nil {
				return fmt.Errorf("virtio: queue %d doorbell: %w", i, err)
			}
			q.bells[k] = b
			if !on[k] {
				if err := b.Move(specs[k].Addr, false); err != nil {
					return fmt.Errorf("virtio: queue %d doorbell: %w", i, err)
				}
			}
		}
	}
	return nil
}

// movedLegacy and movedModern follow BAR moves with the doorbells. They run under
// the function's lock (from a config write on a vCPU), never under t.mu holders that
// wait for the function.
func (t *Transport) movedLegacy(addr uint64, mapped bool) {
	t.moveBells(0, addr+legQueueNotify, 0, mapped)
}

func (t *Transport) movedModern(addr uint64, mapped bool) {
	t.moveBells(1, addr+notifyOffset, notifyMultiplier, mapped)
}

func (t *Transport) moveBells(k int, base, stride uint64, mapped bool) {
	for i := range t.queues {
		if b := t.queues[i].bells[k]; b != nil {
			if err := b.Move(base+uint64(i)*stride, mapped); err != nil {
				t.logf("virtio: move queue %d doorbell: %v", i, err)
			}
		}
	}
}

// Close releases doorbells and eventfds. The device must be reset first.
func (t *Transport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var err error
	for i := range t.queues {
		q := &t.queues[i]
		for k, b := range q.bells {
			if b != nil {
				err = errors.Join(err, b.Close())
				q.bells[k] = nil
			}
		}
		if q.kick != nil {
			err = errors.Join(err, q.kick.Close())
			q.kick = nil
		}
	}
	return err
}

func (t *Transport) logf(format string, args ...any) {
	if t.cfg.Logf != nil {
		t.cfg.Logf(format, args...)
	}
}

// Status returns the device status register.
func (t *Transport) Status() uint8 { return uint8(t.status.Load()) }

// Active reports whether the device runs (DRIVER_OK accepted).
func (t *Transport) Active() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.active
}

// NeedsReset marks the device DEVICE_NEEDS_RESET after err (a broken ring) and
// raises a configuration interrupt; the driver then resets the device. Safe from any
// goroutine; only the first call until the next reset logs.
func (t *Transport) NeedsReset(err error) {
	for {
		s := t.status.Load()
		if s&StatusNeedsReset != 0 {
			return
		}
		if t.status.CompareAndSwap(s, s|StatusNeedsReset) {
			break
		}
	}
	t.logf("virtio: device needs reset: %v", err)
	t.ConfigInterrupt()
}

// ConfigChanged tells the driver the device configuration changed (link status).
func (t *Transport) ConfigChanged() {
	t.generation.Add(1)
	t.ConfigInterrupt()
}

// ConfigInterrupt raises the configuration-change interrupt. Safe from any goroutine.
func (t *Transport) ConfigInterrupt() {
	if t.status.Load()&StatusDriverOK == 0 {
		return
	}
	t.interrupt(uint16(t.cfgVector.Load()), isrConfig)
}

func (t *Transport) queueInterrupt(i int) error {
	if i < 0 || i >= len(t.queues) {
		return fmt.Errorf("virtio: interrupt for queue %d of %d", i, len(t.queues))
	}
	return t.interrupt(uint16(t.queues[i].vector.Load()), isrQueue)
}

func (t *Transport) interrupt(vector uint16, isrBit uint32) error {
	f := t.fn.Load()
	if f == nil {
		return nil
	}
	if m := f.MSIX(); m != nil && m.Enabled() {
		if vector == NoVector {
			return nil
		}
		return m.Fire(int(vector))
	}
	t.isr.Or(isrBit)
	t.intxLevel.Store(true)
	return f.SetIntx(true)
}

// readISR returns and clears the ISR, dropping the INTx level.
func (t *Transport) readISR() uint8 {
	v := t.isr.Swap(0)
	if t.intxLevel.Swap(false) {
		if f := t.fn.Load(); f != nil {
			_ = f.SetIntx(false)
		}
	}
	return uint8(v)
}

// resetLocked returns every register to its reset value, stopping the device first.
func (t *Transport) resetLocked() {
	if t.active {
		t.dev.Reset()
		t.active = false
	}
	t.status.Store(0)
	t.drvFeatures, t.devFeatSel, t.drvFeatSel, t.queueSel = 0, 0, 0, 0
	t.legacyUsed = false
	t.cfgVector.Store(NoVector)
	for i := range t.queues {
		q := &t.queues[i]
		q.size = t.dev.QueueMax(i)
		q.enable, q.desc, q.avail, q.used, q.pfn = false, 0, 0, 0, 0
		q.vector.Store(NoVector)
	}
	t.readISR()
}

func (t *Transport) writeStatus(v uint8) {
	if v == 0 {
		if t.active || t.status.Load() != 0 {
			t.logf("virtio: device reset by the driver")
		}
		t.resetLocked()
		return
	}
	old := uint8(t.status.Load())
	keep := uint32(old) & StatusNeedsReset
	if v&StatusFeaturesOK != 0 && old&StatusFeaturesOK == 0 {
		// The driver may only accept what was offered; modern drivers must take VERSION_1.
		if t.drvFeatures&^t.devFeatures != 0 || (!t.legacyUsed && t.drvFeatures&FVersion1 == 0) {
			v &^= StatusFeaturesOK
		}
	}
	t.status.Store(uint32(v) | keep)
	if v&StatusDriverOK != 0 && !t.active && v&StatusFailed == 0 {
		if !t.legacyUsed && v&StatusFeaturesOK == 0 {
			// A modern driver must have had its features accepted (virtio 1.x 3.1.1);
			// without that nothing says what the device would run with.
			t.NeedsReset(errors.New("DRIVER_OK without an accepted FEATURES_OK"))
			return
		}
		t.activateLocked()
	}
}

// negotiated is what the device runs with: the driver's features, never more than
// offered, and only the 32 legacy bits for a legacy driver.
func (t *Transport) negotiated() uint64 {
	f := t.drvFeatures & t.devFeatures
	if t.legacyUsed {
		f &= 0xffffffff
	}
	return f
}

func (t *Transport) activateLocked() {
	a := &Activation{Features: t.negotiated(), Legacy: t.legacyUsed, Mem: t.cfg.Mem, Queues: make([]*QueueHandle, len(t.queues))}
	for i := range t.queues {
		q := &t.queues[i]
		var qc QueueConfig
		if t.legacyUsed {
			if q.pfn == 0 {
				continue
			}
			qc = legacyLayout(q.pfn, q.size, a.Features&FEventIdx != 0)
		} else {
			if !q.enable {
				continue
			}
			qc = QueueConfig{Size: q.size, Desc: q.desc, Avail: q.avail, Used: q.used}
		}
		qc.EventIdx = a.Features&FEventIdx != 0
		qc.IndirectDesc = a.Features&FIndirectDesc != 0
		vq, err := NewQueue(t.cfg.Mem, qc)
		if err != nil {
			t.NeedsReset(fmt.Errorf("queue %d: %w", i, err))
			return
		}
		h := &QueueHandle{Queue: vq, Index: i, t: t, Kicks: []*notify.EventFD{q.kick}}
		for _, b := range q.bells {
			if b != nil {
				h.Kicks = append(h.Kicks, b.Event())
			}
		}
		a.Queues[i] = h
	}
	if err := t.dev.Activate(a); err != nil {
		t.NeedsReset(fmt.Errorf("activate: %w", err))
		return
	}
	t.active = true
	t.lastFeat.Store(a.Features)
}

// LastFeatures returns the feature bits the driver accepted when it last started the
// device (kept after a reset; 0 before the first start). VERSION_1 (bit 32) is set
// iff that driver used the modern interface. Safe from any goroutine.
func (t *Transport) LastFeatures() uint64 { return t.lastFeat.Load() }

// legacyLayout is the contiguous legacy ring at pfn*4096.
func legacyLayout(pfn uint32, size uint16, eventIdx bool) QueueConfig {
	desc := uint64(pfn) * legacyQueueAlign
	avail := desc + 16*uint64(size)
	availEnd := avail + 4 + 2*uint64(size) + 2 // used_event is always laid out
	used := (availEnd + legacyQueueAlign - 1) &^ (legacyQueueAlign - 1)
	return QueueConfig{Size: size, Desc: desc, Avail: avail, Used: used, EventIdx: eventIdx}
}

// notifyQueue handles a trapped notify write (no doorbell, or before it was placed).
func (t *Transport) notifyQueue(i uint64) {
	if i < uint64(len(t.queues)) {
		if ev := t.queues[i].kick; ev != nil {
			_ = ev.Signal()
		}
	}
}

func (t *Transport) msixOn() bool {
	f := t.fn.Load()
	return f != nil && f.MSIX() != nil && f.MSIX().Enabled()
}

// checkVector accepts a vector the function has, else reads back NoVector (the driver
// then falls back to fewer vectors or INTx).
func (t *Transport) checkVector(v uint16) uint16 {
	f := t.fn.Load()
	if v == NoVector || f == nil || f.MSIX() == nil || int(v) >= f.MSIX().Vectors() {
		return NoVector
	}
	return v
}

func le(data []byte) uint64 {
	var b [8]byte
	copy(b[:], data)
	return binary.LittleEndian.Uint64(b[:])
}

func put(data []byte, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	copy(data, b[:])
}

// legacyRegs is BAR0: the virtio 0.9.5 register block.
type legacyRegs struct{ t *Transport }

func (r legacyRegs) configOff() uint64 {
	if r.t.msixOn() {
		return legacyConfigMSI
	}
	return legacyConfigNoMSI
}

func (r legacyRegs) Read(off uint64, data []byte) {
	t := r.t
	for i := range data {
		data[i] = 0
	}
	if off == legISR && len(data) == 1 {
		data[0] = t.readISR()
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if co := r.configOff(); off >= co {
		t.readDevConfig(int(off-co), data)
		return
	}
	n := len(data)
	switch {
	case off == legHostFeatures && n == 4:
		put(data, t.devFeatures&0xffffffff)
	case off == legGuestFeatures && n == 4:
		put(data, t.drvFeatures&0xffffffff)
	case off == legQueuePFN && n == 4:
		if int(t.queueSel) < len(t.queues) {
			put(data, uint64(t.queues[t.queueSel].pfn))
		}
	case off == legQueueNum && n == 2:
		if int(t.queueSel) < len(t.queues) {
			put(data, uint64(t.queues[t.queueSel].size))
		}
	case off == legQueueSel && n == 2:
		put(data, uint64(t.queueSel))
	case off == legStatus && n == 1:
		data[0] = uint8(t.status.Load())
	case off == legConfigVector && n == 2 && t.msixOn():
		put(data, uint64(t.cfgVector.Load()))
	case off == legQueueVector && n == 2 && t.msixOn():
		if int(t.queueSel) < len(t.queues) {
			put(data, uint64(t.queues[t.queueSel].vector.Load()))
		} else {
			put(data, NoVector)
		}
	}
}

func (r legacyRegs) Write(off uint64, data []byte) {
	t := r.t
	if off == legQueueNotify && len(data) == 2 {
		t.notifyQueue(le(data))
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if co := r.configOff(); off >= co {
		t.writeDevConfig(int(off-co), data)
		return
	}
	v := le(data)
	n := len(data)
	switch {
	case off == legGuestFeatures && n == 4:
		t.legacyUsed = true
		t.drvFeatures = v & t.devFeatures & 0xffffffff
	case off == legQueuePFN && n == 4:
		t.legacyUsed = true
		if int(t.queueSel) < len(t.queues) && !t.active {
			t.queues[t.queueSel].pfn = uint32(v)
		}
	case off == legQueueSel && n == 2:
		t.queueSel = uint16(v)
	case off == legStatus && n == 1:
		t.legacyUsed = true
		t.writeStatus(uint8(v))
	case off == legConfigVector && n == 2 && t.msixOn():
		t.cfgVector.Store(uint32(t.checkVector(uint16(v))))
	case off == legQueueVector && n == 2 && t.msixOn():
		if int(t.queueSel) < len(t.queues) {
			t.queues[t.queueSel].vector.Store(uint32(t.checkVector(uint16(v))))
		}
	}
}

func (t *Transport) readDevConfig(off int, data []byte) {
	if off < 0 || off+len(data) > t.dev.ConfigSize() {
		return
	}
	t.dev.ReadConfig(off, data)
}

func (t *Transport) writeDevConfig(off int, data []byte) {
	if off < 0 || off+len(data) > t.dev.ConfigSize() {
		return
	}
	t.dev.WriteConfig(off, data)
}

// modernRegs is BAR4: common config, ISR, device config and notify areas.
type modernRegs struct{ t *Transport }

func (r modernRegs) Read(off uint64, data []byte) {
	t := r.t
	for i := range data {
		data[i] = 0
	}
	switch {
	case off == isrOffset && len(data) == 1:
		data[0] = t.readISR()
	case off >= deviceOffset && off < notifyOffset:
		t.mu.Lock()
		t.readDevConfig(int(off-deviceOffset), data)
		t.mu.Unlock()
	case off < commonSize:
		t.mu.Lock()
		t.readCommon(off, data)
		t.mu.Unlock()
	}
}

func (r modernRegs) Write(off uint64, data []byte) {
	t := r.t
	switch {
	case off >= notifyOffset && off < modernSize:
		t.notifyQueue((off - notifyOffset) / notifyMultiplier)
	case off >= deviceOffset && off < notifyOffset:
		t.mu.Lock()
		t.writeDevConfig(int(off-deviceOffset), data)
		t.mu.Unlock()
	case off < commonSize:
		t.mu.Lock()
		t.writeCommon(off, data)
		t.mu.Unlock()
	}
}

func (t *Transport) selQueue() *queueRegs {
	if int(t.queueSel) < len(t.queues) {
		return &t.queues[t.queueSel]
	}
	return nil
}

func (t *Transport) readCommon(off uint64, data []byte) {
	n := len(data)
	q := t.selQueue()
	var v uint64
	switch {
	case off == ccDeviceFeatureSel && n == 4:
		v = uint64(t.devFeatSel)
	case off == ccDeviceFeature && n == 4:
		if t.devFeatSel < 2 {
			v = t.devFeatures >> (32 * t.devFeatSel) & 0xffffffff
		}
	case off == ccDriverFeatureSel && n == 4:
		v = uint64(t.drvFeatSel)
	case off == ccDriverFeature && n == 4:
		if t.drvFeatSel < 2 {
			v = t.drvFeatures >> (32 * t.drvFeatSel) & 0xffffffff
		}
	case off == ccMSIXConfig && n == 2:
		v = uint64(t.cfgVector.Load())
	case off == ccNumQueues && n == 2:
		v = uint64(len(t.queues))
	case off == ccDeviceStatus && n == 1:
		v = uint64(t.status.Load())
	case off == ccConfigGeneration && n == 1:
		v = uint64(uint8(t.generation.Load()))
	case off == ccQueueSelect && n == 2:
		v = uint64(t.queueSel)
	case q == nil:
		// Registers of a non-existent queue read as zero (size 0 = unavailable).
	case off == ccQueueSize && n == 2:
		v = uint64(q.size)
	case off == ccQueueMSIXVector && n == 2:
		v = uint64(q.vector.Load())
	case off == ccQueueEnable && n == 2:
		if q.enable {
			v = 1
		}
	case off == ccQueueNotifyOff && n == 2:
		v = uint64(t.queueSel)
	case off >= ccQueueDesc && off < ccQueueDevice+8 && (n == 4 || n == 8):
		v = t.queueAddr(q, off, n)
	}
	put(data, v)
}

func (t *Transport) queueAddr(q *queueRegs, off uint64, n int) uint64 {
	base := (off - ccQueueDesc) &^ 7
	var a uint64
	switch base {
	case 0:
		a = q.desc
	case 8:
		a = q.avail
	case 16:
		a = q.used
	}
	if off%8 == 4 {
		return a >> 32
	}
	if n == 4 {
		return a & 0xffffffff
	}
	return a
}

func (t *Transport) writeCommon(off uint64, data []byte) {
	n := len(data)
	v := le(data)
	q := t.selQueue()
	switch {
	case off == ccDeviceFeatureSel && n == 4:
		t.devFeatSel = uint32(v)
	case off == ccDriverFeatureSel && n == 4:
		t.drvFeatSel = uint32(v)
	case off == ccDriverFeature && n == 4:
		if t.drvFeatSel < 2 && t.status.Load()&StatusFeaturesOK == 0 {
			sh := 32 * t.drvFeatSel
			t.drvFeatures = t.drvFeatures&^(0xffffffff<<sh) | (v&0xffffffff)<<sh
		}
	case off == ccMSIXConfig && n == 2:
		t.cfgVector.Store(uint32(t.checkVector(uint16(v))))
	case off == ccDeviceStatus && n == 1:
		t.writeStatus(uint8(v))
	case off == ccQueueSelect && n == 2:
		t.queueSel = uint16(v)
	case q == nil || t.active:
		// Queue registers are frozen while the device runs (no RING_RESET offered).
	case off == ccQueueSize && n == 2:
		if v >= 1 && v <= uint64(t.dev.QueueMax(int(t.queueSel))) {
			q.size = uint16(v)
		} else {
			q.size = 0 // invalid: the queue fails validation if enabled
		}
	case off == ccQueueMSIXVector && n == 2:
		q.vector.Store(uint32(t.checkVector(uint16(v))))
	case off == ccQueueEnable && n == 2:
		q.enable = v == 1
	case off >= ccQueueDesc && off < ccQueueDevice+8 && (n == 4 || n == 8):
		base := (off - ccQueueDesc) &^ 7
		p := [...]*uint64{&q.desc, &q.avail, &q.used}[base/8]
		switch {
		case n == 8 && off%8 == 0:
			*p = v
		case off%8 == 0:
			*p = *p&^0xffffffff | v&0xffffffff
		case n == 4:
			*p = *p&0xffffffff | v<<32
		}
	}
}
