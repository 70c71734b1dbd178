package ptmemdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/memory"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// Bell is one KICK register's doorbell, a KVM ioeventfd (notify.Doorbell implements
// it). The host loop waits on Event.
type Bell interface {
	Event() *notify.EventFD
	Move(addr uint64, enabled bool) error
	Close() error
}

// BellMaker places a doorbell (notify.NewDoorbell on the VM).
type BellMaker func(notify.DoorbellSpec) (Bell, error)

// Vectors are the ptnet's MSI-X vectors, one per ring: the pci.MSIRouter that routes
// each to the message the guest programs, and per vector the irqfd's eventfd that the
// host loop writes to raise it inside KVM.
type Vectors interface {
	pci.MSIRouter
	// Event is vector v's irqfd eventfd (nil if v is out of range).
	Event(v int) *notify.EventFD
}

// LoopStarter starts the port's host loop where the port lives: on PTCTL CREATE the
// device calls StartLoop, on DELETE, a CSB address write, Reset and Close it stops
// the Loop. Without Config.Loops the loop runs here, on Config.Port
// (netmap.InitCSB, then netmap.StartKloop); a port in a switch service starts it
// there (vmm wires a backends/vale RemotePort).
type LoopStarter interface {
	// StartLoop writes the CSB from the port's ring state (SPECS 3.8) and starts
	// the loop with one kick and one interrupt eventfd per ring (TX rings first).
	StartLoop(csb CSBPlace, kicks, irqs []*notify.EventFD) (Loop, error)
}

// CSBPlace is the CSB the guest programmed: the two arrays' guest-physical
// addresses and their bytes in guest RAM (64 bytes per ring each, checked).
type CSBPlace struct {
	AtokGPA, KtoaGPA uint64
	Atok, Ktoa       []byte
}

// Loop is a running host loop (a *netmap.Kloop is one).
type Loop interface {
	Stop() error
	Stats() []netmap.KloopStats // nil when the loop runs elsewhere
}

// Geometry is what the device tells the guest about a port that is not in this
// process (Config.Port nil): ring and slot counts, the netmap_if offset in the
// memdev's region and that region's mem id.
type Geometry struct {
	Name             string
	TxRings, RxRings int
	TxSlots, RxSlots uint32
	Nifp             uint64
	MemID            uint16
}

// localLoops is the default LoopStarter: the loop on an in-process port.
type localLoops struct{ cfg *Config }

func (l localLoops) StartLoop(c CSBPlace, kicks, irqs []*notify.EventFD) (Loop, error) {
	csb, err := netmap.NewCSB(c.Atok, c.Ktoa, len(kicks))
	if err != nil {
		return nil, fmt.Errorf("CSB: %w", err)
	}
	if err := netmap.InitCSB(l.cfg.Port, csb); err != nil {
		return nil, fmt.Errorf("initialise CSB: %w", err)
	}
	loop, err := netmap.StartKloop(netmap.KloopConfig{
		Name: l.cfg.Name, Port: l.cfg.Port, CSB: csb, Kicks: kicks, Irqs: irqs,
		Mode: l.cfg.Mode, Spin: l.cfg.Spin, Logf: l.cfg.Logf,
	})
	if err != nil {
		return nil, fmt.Errorf("start host loop: %w", err)
	}
	return loop, nil
}

// Config describes a ptnet device.
type Config struct {
	// Name names the device in logs and its host loop (default "ptnet").
	Name string
	// Port is the netmap port passed through: its HW TX rings then HW RX rings are the
	// device's rings 0..n-1 (1..MaxRings in all). The device does not close it.
	// Nil for a port in another process: then Geometry and Loops describe it.
	Port *netmap.Port
	// Geometry (when Port is nil) is the port's geometry.
	Geometry *Geometry
	// Loops starts the host loop (nil: in this process, on Port; required without
	// Port).
	Loops LoopStarter
	MAC   [6]byte
	// VnetHdr says the port's peers expect a 12-byte virtio-net header before each
	// frame: PTFEAT then offers FeatureVnetHdr and VNET_HDR_LEN accepts 12.
	VnetHdr bool
	// Mem is guest RAM, where the guest places the CSB.
	Mem *memory.Memory
	// Bells makes the KICK ioeventfds; nil leaves KICK writes trapped: the device then
	// signals the ring's eventfd itself (slow, for tests without KVM).
	Bells BellMaker
	// Vectors has one vector per ring (required).
	Vectors Vectors
	// Mode and Spin choose how the host loop waits (notify.Block by default).
	Mode notify.Mode
	Spin time.Duration
	// Logf receives refused commands, refused CSB addresses and loop errors (bounded:
	// a guest cannot flood it). Nil: silent.
	Logf func(format string, args ...any)
}

// Stats are a ptnet's counters. Each is monotonic.
type Stats struct {
	Creates      uint64 // host loops started by PTCTL CREATE
	Stops        uint64 // host loops stopped (DELETE, CSB address write, Reset, Close)
	Refused      uint64 // PTCTL commands answered with an errno (CREATE twice, no CSB, garbage)
	IdleDeletes  uint64 // DELETE with no loop running: answered 0, nothing to do
	CSBRefused   uint64 // CSB addresses that are not 64-byte aligned guest RAM
	BadKicks     uint64 // KICK writes beyond the ring count
	TrappedKicks uint64 // KICK writes that reached the VMM (no ioeventfd there), passed on
	BadAccesses  uint64 // non-dword or misaligned accesses, writes to read-only or unknown registers
	VnetRefused  uint64 // VNET_HDR_LEN values not accepted (kept the old one)
}

// Errno values PTCTL reads back (Linux numbers, what the guest driver prints).
const (
	errBusy   = uint32(unix.EBUSY)  // CREATE while running
	errNoCSB  = uint32(unix.ENXIO)  // CREATE before both CSB addresses were written
	errFault  = uint32(unix.EFAULT) // CREATE with a CSB address that was refused
	errInval  = uint32(unix.EINVAL) // unknown command; the two CSB arrays overlap
	errNoDev  = uint32(unix.ENODEV) // device closed or not attached
	errIO     = uint32(unix.EIO)    // the host loop could not start
	logBudget = 64                  // log lines from guest-caused events per device
)

// csbArray is one CSB address register pair and what it maps.
type csbArray struct {
	bah, bal uint32
	mem      []byte // 64*nrings bytes of guest RAM, or nil
	refused  bool   // an address was written but could not be mapped
}

func (a *csbArray) addr() uint64 { return uint64(a.bah)<<32 | uint64(a.bal) }

// Ptnet is the ptnet NIC (1b36:000d): the registers of SPECS 3.3 in BAR0 (32-bit
// MMIO), KICK(i) ioeventfds, one MSI-X vector per ring in BAR2 (irqfds), and the CSB
// the guest places in its RAM. PTCTL CREATE writes the CSB from the port's ring state
// and starts the port's host loop (netmap.Kloop) with the doorbells' and vectors'
// eventfds; DELETE, a CSB address write, Reset and Close stop it.
//
// Concurrency: Read and Write (BAR0) may be called from any vCPU goroutine; they are
// serialised. Reset, Stats and LoopStats are safe from any goroutine. Attach runs once
// before the guest runs; Close once, after the function was removed from the bus.
type Ptnet struct {
	cfg      Config
	ntx, nrx int
	nifp     uint32
	txSlots  uint32
	rxSlots  uint32
	memID    uint16
	hostFeat uint32

	bmu   sync.Mutex        // guards kicks and bells (Moved runs under the function lock)
	kicks []*notify.EventFD // per ring: what the loop waits on
	own   []*notify.EventFD // eventfds created here when there are no bells
	bells []Bell

	mu     sync.Mutex // register state and the loop
	feat   uint32
	ptctl  uint32
	hdrLen uint32
	gh, hg csbArray
	loop   Loop
	closed bool

	creates, stops, refused, idleDeletes, csbRefused atomic.Uint64
	badKicks, trappedKicks, badAccesses, vnetRefused atomic.Uint64
	logLeft                                          atomic.Int32
}

// NewPtnet checks cfg and makes the device; add Spec to the bus, then Attach.
func NewPtnet(cfg Config) (*Ptnet, error) {
	g, err := cfg.geometry()
	switch {
	case err != nil:
		return nil, err
	case cfg.Mem == nil:
		return nil, errors.New("ptmemdev: ptnet without guest memory")
	case cfg.Vectors == nil:
		return nil, errors.New("ptmemdev: ptnet without MSI-X vectors")
	}
	if cfg.Name == "" {
		cfg.Name = "ptnet"
	}
	d := &Ptnet{cfg: cfg, ntx: g.TxRings, nrx: g.RxRings}
	if d.cfg.Loops == nil {
		d.cfg.Loops = localLoops{&d.cfg}
	}
	// The guest driver dereferences ring 0 of each direction: never offer zero rings.
	if d.ntx < 1 || d.nrx < 1 || d.ntx+d.nrx > MaxRings {
		return nil, fmt.Errorf("ptmemdev: %s: port %q has %d TX and %d RX rings (1 each at least, %d in all at most)", cfg.Name, g.Name, d.ntx, d.nrx, MaxRings)
	}
	if g.Nifp > 0xffff_ffff {
		return nil, fmt.Errorf("ptmemdev: %s: netmap_if offset %#x beyond the 32-bit NIFP_OFS", cfg.Name, g.Nifp)
	}
	d.nifp = uint32(g.Nifp)
	d.txSlots, d.rxSlots = g.TxSlots, g.RxSlots
	d.memID = g.MemID
	if cfg.VnetHdr {
		d.hostFeat = FeatureVnetHdr
	}
	d.logLeft.Store(logBudget)
	if cfg.Bells == nil {
		for range d.NumRings() {
			ev, err := notify.NewEventFD()
			if err != nil {
				d.closeKicks()
				return nil, fmt.Errorf("ptmemdev: %s: kick eventfd: %w", cfg.Name, err)
			}
			d.own = append(d.own, ev)
		}
		d.kicks = d.own
	}
	return d, nil
}

// geometry is the port's geometry, from Port or from Geometry.
func (c *Config) geometry() (Geometry, error) {
	p := c.Port
	switch {
	case p != nil:
		return Geometry{Name: p.Name(), TxRings: p.NumTxRings(), RxRings: p.NumRxRings(),
			TxSlots: p.TxRing(0).NumSlots(), RxSlots: p.RxRing(0).NumSlots(),
			Nifp: p.NifpOffset(), MemID: p.Region().ID()}, nil
	case c.Geometry == nil || c.Loops == nil:
		return Geometry{}, errors.New("ptmemdev: ptnet without a port (or a Geometry and Loops for one elsewhere)")
	}
	return *c.Geometry, nil
}

// NumRings is the number of rings, TX then RX: one KICK, one CSB entry pair and one
// MSI-X vector each.
func (d *Ptnet) NumRings() int { return d.ntx + d.nrx }

// MemID is HOSTMEMID: the mem id of the memdev the guest pairs this device with.
func (d *Ptnet) MemID() uint16 { return d.memID }

// Spec is the PCI function: BAR0 registers (32-bit MMIO, 4 KiB), BAR2 MSI-X with one
// vector per ring. No INTx: netmap's guest driver needs MSI-X and never uses INTA.
func (d *Ptnet) Spec() pci.Spec {
	s := pci.Spec{
		VendorID: VendorID, DeviceID: PtnetDeviceID,
		SubVendorID: VendorID, SubsystemID: SubsystemID,
		Class: PtnetClass,
	}
	s.BARs[RegsBAR] = &pci.BAR{Kind: pci.BARMem32, Size: PtnetRegsSize, Device: d, Moved: d.moved}
	s.BARs[MSIXBAR] = &pci.BAR{Kind: pci.BARMem32, Size: MSIXSize}
	s.MSIX = &pci.MSIXSpec{Vectors: d.NumRings(), BAR: MSIXBAR, TableOffset: 0, PBAOffset: MSIXPBAOffset, Router: d.cfg.Vectors}
	return s
}

// Attach places the KICK doorbells at BAR0 of f, the function the root created from
// Spec. Without Config.Bells it does nothing.
func (d *Ptnet) Attach(f *pci.Function) error {
	if d.cfg.Bells == nil {
		return nil
	}
	base, on := f.BARAddr(RegsBAR)
	d.bmu.Lock()
	defer d.bmu.Unlock()
	if d.bells != nil {
		return fmt.Errorf("ptmemdev: %s: attached twice", d.cfg.Name)
	}
	kicks := make([]*notify.EventFD, 0, d.NumRings())
	for i := range d.NumRings() {
		addr := base + RegKickBase + 4*uint64(i)
		b, err := d.cfg.Bells(notify.DoorbellSpec{Addr: addr, Len: 4})
		if err != nil {
			return fmt.Errorf("ptmemdev: %s: ring %d doorbell: %w", d.cfg.Name, i, err)
		}
		d.bells = append(d.bells, b)
		if !on {
			if err := b.Move(addr, false); err != nil {
				return fmt.Errorf("ptmemdev: %s: ring %d doorbell: %w", d.cfg.Name, i, err)
			}
		}
		kicks = append(kicks, b.Event())
	}
	d.kicks = kicks
	return nil
}

// moved follows BAR0 with the doorbells. It runs under the function's lock.
func (d *Ptnet) moved(addr uint64, mapped bool) {
	d.bmu.Lock()
	defer d.bmu.Unlock()
	for i, b := range d.bells {
		if err := b.Move(addr+RegKickBase+4*uint64(i), mapped); err != nil {
			d.logf("ptmemdev: %s: move ring %d doorbell: %v", d.cfg.Name, i, err)
		}
	}
}

// logf logs a guest-caused event while the device's budget lasts.
func (d *Ptnet) logf(format string, args ...any) {
	if d.cfg.Logf == nil {
		return
	}
	switch n := d.logLeft.Add(-1); {
	case n > 0:
		d.cfg.Logf(format, args...)
	case n == 0:
		d.cfg.Logf(format+" (further events are only counted)", args...)
	}
}

// Stats returns the counters. Safe from any goroutine.
func (d *Ptnet) Stats() Stats {
	return Stats{
		Creates: d.creates.Load(), Stops: d.stops.Load(), Refused: d.refused.Load(),
		IdleDeletes: d.idleDeletes.Load(), CSBRefused: d.csbRefused.Load(),
		BadKicks: d.badKicks.Load(), TrappedKicks: d.trappedKicks.Load(),
		BadAccesses: d.badAccesses.Load(), VnetRefused: d.vnetRefused.Load(),
	}
}

// Running reports whether the host loop runs.
func (d *Ptnet) Running() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.loop != nil
}

// LoopStats returns the running host loop's per-ring counters, or nil.
func (d *Ptnet) LoopStats() []netmap.KloopStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.loop == nil {
		return nil
	}
	return d.loop.Stats()
}

// VnetHdrLen is the VNET_HDR_LEN the guest set and the device accepted (0 or 12).
func (d *Ptnet) VnetHdrLen() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return int(d.hdrLen)
}

// Read serves a BAR0 read. Only aligned dwords are registers; anything else reads as
// zero and is counted.
func (d *Ptnet) Read(off uint64, data []byte) {
	clear(data)
	if len(data) != 4 || off%4 != 0 || off >= PtnetRegsSize {
		d.badAccesses.Add(1)
		return
	}
	if off >= RegKickBase {
		return // KICK registers are write-only
	}
	d.mu.Lock()
	v := d.readLocked(off)
	d.mu.Unlock()
	binary.LittleEndian.PutUint32(data, v)
}

func (d *Ptnet) readLocked(off uint64) uint32 {
	m := d.cfg.MAC
	switch off {
	case RegPtfeat:
		return d.feat
	case RegPtctl:
		return d.ptctl
	case RegMacLo:
		return uint32(m[2])<<24 | uint32(m[3])<<16 | uint32(m[4])<<8 | uint32(m[5])
	case RegMacHi:
		return uint32(m[0])<<8 | uint32(m[1])
	case RegNifpOfs:
		return d.nifp
	case RegNumTxRings:
		return uint32(d.ntx)
	case RegNumRxRings:
		return uint32(d.nrx)
	case RegNumTxSlots:
		return d.txSlots
	case RegNumRxSlots:
		return d.rxSlots
	case RegVnetHdrLen:
		return d.hdrLen
	case RegHostMemID:
		return uint32(d.memID)
	case RegCSBGHBAH:
		return d.gh.bah
	case RegCSBGHBAL:
		return d.gh.bal
	case RegCSBHGBAH:
		return d.hg.bah
	case RegCSBHGBAL:
		return d.hg.bal
	}
	return 0 // deprecated CSBBAH/BAL, reserved space
}

// Write serves a BAR0 write: a KICK (when it trapped instead of hitting its
// ioeventfd) or a register.
func (d *Ptnet) Write(off uint64, data []byte) {
	if len(data) != 4 || off%4 != 0 || off >= PtnetRegsSize {
		d.badAccesses.Add(1)
		return
	}
	v := binary.LittleEndian.Uint32(data)
	if off >= RegKickBase {
		d.trappedKick((off - RegKickBase) / 4)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch off {
	case RegPtfeat:
		d.feat = v & d.hostFeat
	case RegPtctl:
		d.ptctl = d.commandLocked(v)
	case RegCSBGHBAH:
		d.gh.bah = v
	case RegCSBHGBAH:
		d.hg.bah = v
	case RegCSBGHBAL:
		d.gh.bal = v
		d.csbWriteLocked(&d.gh, "GH")
	case RegCSBHGBAL:
		d.hg.bal = v
		d.csbWriteLocked(&d.hg, "HG")
	case RegVnetHdrLen:
		if v == 0 || v == VnetHdrLen && d.feat&FeatureVnetHdr != 0 {
			d.hdrLen = v
		} else {
			// Counted, not logged: netmap's guest driver always asks for 12 and
			// reads back what it got, whatever PTFEAT acked.
			d.vnetRefused.Add(1)
		}
	default:
		d.badAccesses.Add(1) // read-only, deprecated or reserved
	}
}

// trappedKick passes on a KICK write that reached the VMM: the ring's eventfd is the
// same one the ioeventfd signals, so the loop cannot tell the difference.
func (d *Ptnet) trappedKick(i uint64) {
	if i >= uint64(d.NumRings()) {
		d.badKicks.Add(1)
		return
	}
	d.bmu.Lock()
	defer d.bmu.Unlock()
	if i < uint64(len(d.kicks)) && d.kicks[i] != nil {
		d.trappedKicks.Add(1)
		_ = d.kicks[i].Signal()
	}
}

// csbWriteLocked follows a BAL write: as in netmap's device the running loop stops,
// then the array is mapped anew (address 0 unmaps it).
func (d *Ptnet) csbWriteLocked(a *csbArray, which string) {
	d.stopLocked()
	a.mem, a.refused = nil, false
	gpa := a.addr()
	if gpa == 0 {
		return
	}
	n := uint64(netmap.CSBEntrySize * d.NumRings())
	b, err := d.cfg.Mem.Slice(gpa, n)
	if err == nil && gpa%netmap.CSBEntrySize != 0 {
		err = fmt.Errorf("not %d-byte aligned", netmap.CSBEntrySize)
	}
	if err != nil {
		a.refused = true
		d.csbRefused.Add(1)
		d.logf("ptmemdev: %s: CSB %s at %#x+%#x refused: %v", d.cfg.Name, which, gpa, n, err)
		return
	}
	a.mem = b
}

// commandLocked runs a PTCTL command and returns the value PTCTL then reads.
func (d *Ptnet) commandLocked(cmd uint32) uint32 {
	var errno uint32
	switch cmd {
	case PtctlCreate:
		errno = d.createLocked()
	case PtctlDelete:
		if d.loop == nil {
			d.idleDeletes.Add(1)
			return 0
		}
		d.stopLocked()
		return 0
	default:
		errno = errInval
	}
	if errno != 0 {
		d.refused.Add(1)
		d.logf("ptmemdev: %s: PTCTL %#x refused: %v", d.cfg.Name, cmd, unix.Errno(errno))
	}
	return errno
}

func overlap(a, b csbArray, n uint64) bool {
	x, y := a.addr(), b.addr()
	return x < y+n && y < x+n
}

func (d *Ptnet) createLocked() uint32 {
	switch {
	case d.closed:
		return errNoDev
	case d.loop != nil:
		return errBusy
	case d.gh.refused || d.hg.refused:
		return errFault
	case d.gh.mem == nil || d.hg.mem == nil:
		return errNoCSB
	case overlap(d.gh, d.hg, uint64(len(d.gh.mem))):
		return errInval
	}
	d.bmu.Lock()
	kicks := append([]*notify.EventFD(nil), d.kicks...)
	d.bmu.Unlock()
	if len(kicks) != d.NumRings() {
		return errNoDev // Attach did not run
	}
	irqs := make([]*notify.EventFD, d.NumRings())
	for i := range irqs {
		if irqs[i] = d.cfg.Vectors.Event(i); irqs[i] == nil {
			return errNoDev
		}
	}
	loop, err := d.cfg.Loops.StartLoop(CSBPlace{AtokGPA: d.gh.addr(), KtoaGPA: d.hg.addr(), Atok: d.gh.mem, Ktoa: d.hg.mem}, kicks, irqs)
	if err != nil {
		d.logf("ptmemdev: %s: %v", d.cfg.Name, err)
		return errIO
	}
	d.loop = loop
	d.creates.Add(1)
	return 0
}

// stopLocked stops the loop if it runs; it returns when the loop's goroutines are gone.
func (d *Ptnet) stopLocked() {
	if d.loop == nil {
		return
	}
	if err := d.loop.Stop(); err != nil && d.cfg.Logf != nil {
		d.cfg.Logf("ptmemdev: %s: stop host loop: %v", d.cfg.Name, err)
	}
	d.loop = nil
	d.stops.Add(1)
}

// Reset stops the host loop and returns every register to its reset value (CSB
// unmapped, features and VNET_HDR_LEN 0), as at power-on. Safe from any goroutine.
func (d *Ptnet) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.resetLocked()
}

func (d *Ptnet) resetLocked() {
	d.stopLocked()
	d.feat, d.ptctl, d.hdrLen = 0, 0, 0
	d.gh, d.hg = csbArray{}, csbArray{}
}

// Close stops the loop and releases the doorbells and eventfds. Later register
// accesses are harmless (CREATE answers ENODEV). The vectors belong to the caller.
func (d *Ptnet) Close() error {
	d.mu.Lock()
	d.resetLocked()
	d.closed = true
	d.mu.Unlock()
	return d.closeKicks()
}

func (d *Ptnet) closeKicks() error {
	d.bmu.Lock()
	defer d.bmu.Unlock()
	var err error
	for _, b := range d.bells {
		err = errors.Join(err, b.Close())
	}
	for _, ev := range d.own {
		err = errors.Join(err, ev.Close())
	}
	d.bells, d.own, d.kicks = nil, nil, nil
	if err != nil {
		return fmt.Errorf("ptmemdev: %s: close: %w", d.cfg.Name, err)
	}
	return nil
}
