package kvm

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// Interrupt and notification ioctls (linux/kvm.h), checked in irq_test.go.
var (
	kvmSetGSIRouting = iow(0x6a, 8)
	kvmIRQFD         = iow(0x76, 32)
	kvmIOEventFD     = iow(0x79, 64)
	kvmSignalMSI     = iow(0xa5, 32)
)

// Capabilities of the notification paths.
const (
	CapIRQRouting         = 25
	CapSignalMSI          = 77
	CapIRQFDResample      = 82
	CapIOEventFDNoLength  = 100
	CapIOEventFDAnyLength = 122
)

// ioeventfd flags (KVM_IOEVENTFD_FLAG_*).
const (
	ioeventfdDatamatch = 1 << 0
	ioeventfdPIO       = 1 << 1
	ioeventfdDeassign  = 1 << 2
)

// irqfd flags (KVM_IRQFD_FLAG_*).
const (
	irqfdDeassign = 1 << 0
	irqfdResample = 1 << 1
)

// Routing entry types (KVM_IRQ_ROUTING_*) and irqchips (KVM_IRQCHIP_*).
const (
	RouteIRQChip = 1
	RouteMSI     = 2

	IRQChipPICMaster = 0
	IRQChipPICSlave  = 1
	IRQChipIOAPIC    = 2
)

// ioeventfdArgs is struct kvm_ioeventfd (64 bytes).
type ioeventfdArgs struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	Pad       [36]byte
}

// irqfdArgs is struct kvm_irqfd (32 bytes).
type irqfdArgs struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	Pad        [16]byte
}

// msiArgs is struct kvm_msi (32 bytes).
type msiArgs struct {
	AddressLo uint32
	AddressHi uint32
	Data      uint32
	Flags     uint32
	DevID     uint32
	Pad       [12]byte
}

// kvm_irq_routing: 8-byte header (nr, flags) then 48-byte entries.
const (
	routingHeader    = 8
	routingEntrySize = 48
)

// IOEvent describes an ioeventfd: guest writes matching it signal FD inside KVM with
// no exit to the VMM.
type IOEvent struct {
	Addr uint64
	// Len is the access width, 1, 2, 4 or 8. 0 matches any width (MMIO only, needs
	// CapIOEventFDAnyLength, and excludes DataMatch).
	Len uint32
	PIO bool // port I/O address instead of MMIO
	// DataMatch restricts the event to writes of exactly Data.
	DataMatch bool
	Data      uint64
	FD        int
}

func (e IOEvent) args() (ioeventfdArgs, error) {
	switch e.Len {
	case 1, 2, 4, 8:
	case 0:
		if e.PIO || e.DataMatch {
			return ioeventfdArgs{}, fmt.Errorf("kvm: ioeventfd at %#x: length 0 is MMIO-only and cannot match data", e.Addr)
		}
	default:
		return ioeventfdArgs{}, fmt.Errorf("kvm: ioeventfd at %#x: length %d (want 0, 1, 2, 4, 8)", e.Addr, e.Len)
	}
	a := ioeventfdArgs{Addr: e.Addr, Len: e.Len, FD: int32(e.FD)}
	if e.PIO {
		a.Flags |= ioeventfdPIO
	}
	if e.DataMatch {
		a.Flags |= ioeventfdDatamatch
		a.Datamatch = e.Data
	}
	return a, nil
}

func (e IOEvent) String() string {
	space := "mmio"
	if e.PIO {
		space = "pio"
	}
	if e.DataMatch {
		return fmt.Sprintf("%s %#x/%d==%#x fd %d", space, e.Addr, e.Len, e.Data, e.FD)
	}
	return fmt.Sprintf("%s %#x/%d fd %d", space, e.Addr, e.Len, e.FD)
}

// AssignIOEventFD registers e (KVM_IOEVENTFD). Two events on the same address and
// length need distinct datamatch values.
func (v *VM) AssignIOEventFD(e IOEvent) error {
	a, err := e.args()
	if err != nil {
		return err
	}
	if _, err := ioctlPtr(v.fd, kvmIOEventFD, &a); err != nil {
		return fmt.Errorf("kvm: KVM_IOEVENTFD assign %v: %w", e, err)
	}
	return nil
}

// DeassignIOEventFD removes an event registered with the same IOEvent.
func (v *VM) DeassignIOEventFD(e IOEvent) error {
	a, err := e.args()
	if err != nil {
		return err
	}
	a.Flags |= ioeventfdDeassign
	if _, err := ioctlPtr(v.fd, kvmIOEventFD, &a); err != nil {
		return fmt.Errorf("kvm: KVM_IOEVENTFD deassign %v: %w", e, err)
	}
	return nil
}

// AssignIRQFD makes a write to eventfd fd inject gsi (KVM_IRQFD). With resampleFD >= 0
// the GSI is level-triggered: it stays asserted until the guest's EOI, when KVM
// de-asserts it and signals resampleFD (the VMM re-triggers if still pending).
func (v *VM) AssignIRQFD(fd int, gsi uint32, resampleFD int) error {
	a := irqfdArgs{FD: uint32(fd), GSI: gsi}
	if resampleFD >= 0 {
		a.Flags = irqfdResample
		a.ResampleFD = uint32(resampleFD)
	}
	if _, err := ioctlPtr(v.fd, kvmIRQFD, &a); err != nil {
		return fmt.Errorf("kvm: KVM_IRQFD assign fd %d gsi %d: %w", fd, gsi, err)
	}
	return nil
}

// DeassignIRQFD removes the irqfd binding of fd to gsi.
func (v *VM) DeassignIRQFD(fd int, gsi uint32) error {
	a := irqfdArgs{FD: uint32(fd), GSI: gsi, Flags: irqfdDeassign}
	if _, err := ioctlPtr(v.fd, kvmIRQFD, &a); err != nil {
		return fmt.Errorf("kvm: KVM_IRQFD deassign fd %d gsi %d: %w", fd, gsi, err)
	}
	return nil
}

// MSI is a message-signalled interrupt: the address and data a device writes.
type MSI struct {
	Addr uint64
	Data uint32
}

// SignalMSI injects one MSI (KVM_SIGNAL_MSI). delivered is false when the guest
// blocked it (e.g. no APIC accepted it).
func (v *VM) SignalMSI(m MSI) (delivered bool, err error) {
	a := msiArgs{AddressLo: uint32(m.Addr), AddressHi: uint32(m.Addr >> 32), Data: m.Data}
	r, err := ioctlPtr(v.fd, kvmSignalMSI, &a)
	if err != nil {
		return false, fmt.Errorf("kvm: KVM_SIGNAL_MSI %#x/%#x: %w", m.Addr, m.Data, err)
	}
	return r > 0, nil
}

// Route is one GSI routing entry: to an irqchip pin, or to an MSI message.
type Route struct {
	GSI  uint32
	Type uint32 // RouteIRQChip or RouteMSI
	Chip uint32 // IRQChip*, for RouteIRQChip
	Pin  uint32 // for RouteIRQChip
	MSI  MSI    // for RouteMSI
}

// encodeRouting lays out struct kvm_irq_routing with its entries.
func encodeRouting(routes []Route) []byte {
	b := make([]byte, routingHeader+routingEntrySize*len(routes))
	le := binary.LittleEndian
	le.PutUint32(b[0:], uint32(len(routes)))
	for i, r := range routes {
		e := b[routingHeader+routingEntrySize*i:]
		le.PutUint32(e[0:], r.GSI)
		le.PutUint32(e[4:], r.Type)
		switch r.Type {
		case RouteIRQChip:
			le.PutUint32(e[16:], r.Chip)
			le.PutUint32(e[20:], r.Pin)
		case RouteMSI:
			le.PutUint32(e[16:], uint32(r.MSI.Addr))
			le.PutUint32(e[20:], uint32(r.MSI.Addr>>32))
			le.PutUint32(e[24:], r.MSI.Data)
		}
	}
	return b
}

// SetGSIRouting replaces the whole GSI routing table (KVM_SET_GSI_ROUTING).
func (v *VM) SetGSIRouting(routes []Route) error {
	for _, r := range routes {
		if r.Type != RouteIRQChip && r.Type != RouteMSI {
			return fmt.Errorf("kvm: GSI %d: route type %d not supported", r.GSI, r.Type)
		}
	}
	if _, err := ioctlBytes(v.fd, kvmSetGSIRouting, encodeRouting(routes)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_GSI_ROUTING (%d entries): %w", len(routes), err)
	}
	return nil
}

// IRQChipGSIs is how many GSIs the in-kernel irqchip's default table routes (the
// IOAPIC's 24 pins); MSI routes are allocated above them.
const IRQChipGSIs = 24

// DefaultIRQChipRoutes is the table KVM installs with KVM_CREATE_IRQCHIP: GSIs 0-15
// to both the PIC pair and the IOAPIC, 16-23 to the IOAPIC only. Setting any route
// replaces the whole table, so these must be kept alongside MSI routes.
func DefaultIRQChipRoutes() []Route {
	var rs []Route
	for g := uint32(0); g < IRQChipGSIs; g++ {
		rs = append(rs, Route{GSI: g, Type: RouteIRQChip, Chip: IRQChipIOAPIC, Pin: g})
		if g < 16 {
			chip := uint32(IRQChipPICMaster)
			if g >= 8 {
				chip = IRQChipPICSlave
			}
			rs = append(rs, Route{GSI: g, Type: RouteIRQChip, Chip: chip, Pin: g % 8})
		}
	}
	return rs
}

// GSIRouting keeps the VM's routing table: the irqchip defaults plus MSI routes on
// GSIs it allocates, committed whole on every change.
//
// Concurrency: safe for concurrent use; changes are serialised.
type GSIRouting struct {
	vm   *VM
	mu   sync.Mutex
	base []Route
	msi  map[uint32]*MSI // allocated GSI -> message (nil: allocated, not routed)
	next uint32
	max  uint32
}

// NewGSIRouting starts from the irqchip defaults (withIRQChip) or an empty table.
// max bounds the GSI numbers (KVM_MAX_IRQ_ROUTES is 4096 on x86).
func NewGSIRouting(vm *VM, withIRQChip bool) *GSIRouting {
	r := &GSIRouting{vm: vm, msi: map[uint32]*MSI{}, max: 4096}
	if withIRQChip {
		r.base = DefaultIRQChipRoutes()
		r.next = IRQChipGSIs
	}
	return r
}

// Alloc reserves a GSI for an MSI route without routing it yet (an irqfd may be bound
// to it; firing it before SetMSI delivers nothing).
func (r *GSIRouting) Alloc() (uint32, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for g := r.next; g < r.max; g++ {
		if _, used := r.msi[g]; !used {
			r.msi[g] = nil
			return g, nil
		}
	}
	return 0, fmt.Errorf("kvm: no free GSI for an MSI route (%d in use)", len(r.msi))
}

// SetMSI routes an allocated gsi to message m and commits the table.
func (r *GSIRouting) SetMSI(gsi uint32, m MSI) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.msi[gsi]
	if !ok {
		return fmt.Errorf("kvm: GSI %d was not allocated", gsi)
	}
	if old != nil && *old == m {
		return nil
	}
	r.msi[gsi] = &m
	if err := r.commit(); err != nil {
		r.msi[gsi] = old
		return err
	}
	return nil
}

// Free releases gsi and removes its route.
func (r *GSIRouting) Free(gsi uint32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, ok := r.msi[gsi]
	if !ok {
		return nil
	}
	delete(r.msi, gsi)
	if m == nil {
		return nil
	}
	return r.commit()
}

// Routes returns the table as it would be committed.
func (r *GSIRouting) Routes() []Route {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.table()
}

func (r *GSIRouting) table() []Route {
	rs := append([]Route(nil), r.base...)
	for g, m := range r.msi {
		if m != nil {
			rs = append(rs, Route{GSI: g, Type: RouteMSI, MSI: *m})
		}
	}
	return rs
}

func (r *GSIRouting) commit() error { return r.vm.SetGSIRouting(r.table()) }
