package pci

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// MSIRouter connects MSI-X vectors to the interrupt controller: in KVM terms one GSI
// route and one irqfd per vector.
type MSIRouter interface {
	// RouteMSI points vector v at the message the guest programmed. It is called when an
	// entry becomes unmasked and when the guest rewrites an unmasked entry.
	RouteMSI(v int, addr uint64, data uint32) error
	// FireMSI delivers vector v (signals its irqfd).
	FireMSI(v int) error
}

// MaskNotifier is an optional MSIRouter extension for a device whose interrupts do
// not go through MSIX.Fire: something else (a host loop given the irqfd) raises them,
// so MSIX cannot hold them in the PBA itself. MSIX finds it with a type assertion on
// the Router. Such a router delivers nothing for a vector until told it is live, and
// holds what is raised meanwhile (KVM: the irqfd detached, its eventfd counting).
//
// A vector is live while it is unmasked (entry bit clear, MSI-X enabled, function
// mask clear) and routed (RouteMSI accepted its current message). MSIX calls
// MaskChanged(v, false) when v becomes live, after the RouteMSI for its message and
// before it fires v's PBA bit; and MaskChanged(v, true) when it stops being live (the
// guest masked it, or rewrote it and the new route failed), before the guest's write
// completes. Every vector starts masked. A failed MaskChanged leaves the state as it
// was (counted; retried at the vector's next table or control write).
//
// PendingMSI reports whether a masked vector holds an interrupt; MSIX ORs it into the
// PBA bit (Pending, guest PBA reads). It is not asked about live vectors.
//
// Both run with the MSIX lock held, on the vCPU goroutine of the guest's access: they
// must not call back into the MSIX (it would deadlock) and should not block long.
type MaskNotifier interface {
	MaskChanged(v int, masked bool) error
	PendingMSI(v int) bool
}

// MSIXSpec places a device's MSI-X table and PBA inside one of its trapped memory BARs.
type MSIXSpec struct {
	Vectors     int // 1..2048
	BAR         int
	TableOffset uint32 // 8-byte aligned
	PBAOffset   uint32 // 8-byte aligned, not overlapping the table
	Router      MSIRouter
}

type msixEntry struct {
	addr   uint64
	data   uint32
	ctrl   uint32
	routed bool // the router holds this entry's current message
	live   bool // the MaskNotifier was told this vector is unmasked
}

// MSIX is a function's MSI-X capability state: the table, the pending bits, and the
// enable and function-mask bits of the message control register.
//
// Concurrency: all methods may be called from any goroutine.
type MSIX struct {
	spec MSIXSpec
	mn   MaskNotifier // the Router's, or nil

	mu      sync.Mutex
	ctrl    uint16 // MSIXCtrlEnable | MSIXCtrlMaskAll
	entries []msixEntry
	pending []uint64
	errs    uint64 // router failures (guest-visible only as lost interrupts)
}

func newMSIX(_ *Function, s MSIXSpec) *MSIX {
	m := &MSIX{spec: s, entries: make([]msixEntry, s.Vectors), pending: make([]uint64, (s.Vectors+63)/64)}
	m.mn, _ = s.Router.(MaskNotifier)
	for i := range m.entries {
		m.entries[i].ctrl = msixEntryCtrlBit // masked at reset
	}
	return m
}

// Vectors is the table size.
func (m *MSIX) Vectors() int { return m.spec.Vectors }

func (m *MSIX) control() uint16 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return uint16(m.spec.Vectors-1) | m.ctrl
}

func (m *MSIX) enabled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ctrl&MSIXCtrlEnable != 0
}

// Enabled reports whether the guest enabled MSI-X.
func (m *MSIX) Enabled() bool { return m.enabled() }

func (m *MSIX) writeControl(v uint16) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ctrl = v & (MSIXCtrlEnable | MSIXCtrlMaskAll)
	m.update(-1)
}

func (m *MSIX) masked(v int) bool {
	return m.ctrl&MSIXCtrlEnable == 0 || m.ctrl&MSIXCtrlMaskAll != 0 || m.entries[v].ctrl&msixEntryCtrlBit != 0
}

// update re-routes unmasked entries whose message changed, tells a MaskNotifier
// about vectors that became live or stopped being live, and delivers pending vectors
// that became unmasked; v < 0 means every vector.
func (m *MSIX) update(v int) {
	lo, hi := 0, len(m.entries)
	if v >= 0 {
		lo, hi = v, v+1
	}
	for i := lo; i < hi; i++ {
		e := &m.entries[i]
		masked := m.masked(i)
		if !masked && !e.routed {
			if err := m.spec.Router.RouteMSI(i, e.addr, e.data); err != nil {
				m.errs++
			} else {
				e.routed = true
			}
		}
		if m.mn != nil && e.live != (!masked && e.routed) {
			if m.mn.MaskChanged(i, e.live) != nil { // was live: now masked, and vice versa
				m.errs++
			} else {
				e.live = !e.live
			}
		}
		if masked || !e.routed || m.mn != nil && !e.live {
			continue
		}
		if m.pending[i/64]&(1<<(i%64)) != 0 {
			m.pending[i/64] &^= 1 << (i % 64)
			if m.spec.Router.FireMSI(i) != nil {
				m.errs++
			}
		}
	}
}

// pendingBit is vector v's PBA bit: set by Fire while masked, or, for a MaskNotifier,
// an interrupt the router holds for a vector that is not live. Called with mu held.
func (m *MSIX) pendingBit(v int) bool {
	if m.pending[v/64]&(1<<(v%64)) != 0 {
		return true
	}
	return m.mn != nil && !m.entries[v].live && m.mn.PendingMSI(v)
}

// Fire delivers vector v, or sets its pending bit if it is masked (the guest sees it
// in the PBA and gets it on unmask). Out-of-range vectors are an error.
func (m *MSIX) Fire(v int) error {
	if v < 0 || v >= len(m.entries) {
		return fmt.Errorf("pci: MSI-X vector %d out of range (%d vectors)", v, len(m.entries))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.masked(v) {
		m.pending[v/64] |= 1 << (v % 64)
		return nil
	}
	return m.spec.Router.FireMSI(v)
}

// Pending reports vector v's PBA bit (for a MaskNotifier router, including what the
// router holds for it while it is masked).
func (m *MSIX) Pending(v int) bool {
	if v < 0 || v >= len(m.entries) {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pendingBit(v)
}

// Message returns vector v's programmed address, data and mask bit.
func (m *MSIX) Message(v int) (addr uint64, data uint32, masked bool) {
	if v < 0 || v >= len(m.entries) {
		return 0, 0, true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[v]
	return e.addr, e.data, e.ctrl&msixEntryCtrlBit != 0
}

func (m *MSIX) tableEnd() uint64 {
	return uint64(m.spec.TableOffset) + uint64(len(m.entries))*MSIXEntrySize
}

func (m *MSIX) pbaEnd() uint64 { return uint64(m.spec.PBAOffset) + uint64(len(m.pending))*8 }

// claims reports whether a BAR access at off touches the table or the PBA.
func (m *MSIX) claims(off uint64, n int) bool {
	end := off + uint64(n)
	in := func(lo, hi uint64) bool { return off < hi && end > lo }
	return in(uint64(m.spec.TableOffset), m.tableEnd()) || in(uint64(m.spec.PBAOffset), m.pbaEnd())
}

// aligned accepts the dword and qword accesses the MSI-X spec allows.
func aligned(off uint64, n int) bool {
	return (n == 4 || n == 8) && off%uint64(n) == 0
}

func (m *MSIX) read(off uint64, data []byte) {
	fill(data, 0)
	if !aligned(off, len(data)) {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := 0; k < len(data); k += 4 {
		o := off + uint64(k)
		var v uint32
		switch {
		case o >= uint64(m.spec.TableOffset) && o < m.tableEnd():
			rel := o - uint64(m.spec.TableOffset)
			e := &m.entries[rel/MSIXEntrySize]
			switch rel % MSIXEntrySize {
			case 0:
				v = uint32(e.addr)
			case 4:
				v = uint32(e.addr >> 32)
			case 8:
				v = e.data
			case 12:
				v = e.ctrl
			}
		case o >= uint64(m.spec.PBAOffset) && o < m.pbaEnd():
			first := int(o-uint64(m.spec.PBAOffset)) * 8 // vector of bit 0
			for b := 0; b < 32 && first+b < len(m.entries); b++ {
				if m.pendingBit(first + b) {
					v |= 1 << b
				}
			}
		}
		binary.LittleEndian.PutUint32(data[k:], v)
	}
}

func (m *MSIX) write(off uint64, data []byte) {
	if !aligned(off, len(data)) {
		return // the spec leaves other sizes undefined; drop them
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := 0; k < len(data); k += 4 {
		o := off + uint64(k)
		if o < uint64(m.spec.TableOffset) || o >= m.tableEnd() {
			continue // PBA is read-only; gaps are reserved
		}
		v := binary.LittleEndian.Uint32(data[k:])
		rel := o - uint64(m.spec.TableOffset)
		idx := int(rel / MSIXEntrySize)
		e := &m.entries[idx]
		switch rel % MSIXEntrySize {
		case 0:
			e.addr = e.addr&^0xffffffff | uint64(v&^3) // address is dword aligned
			e.routed = false
		case 4:
			e.addr = e.addr&0xffffffff | uint64(v)<<32
			e.routed = false
		case 8:
			e.data = v
			e.routed = false
		case 12:
			e.ctrl = v & msixEntryCtrlBit // other bits reserved
		}
		m.update(idx)
	}
}
