package bus

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
)

// Device handles accesses at an offset from the base it was registered at.
//
// Concurrency: a device may be called from several vCPU goroutines at once; it does
// its own locking.
type Device interface {
	// Read fills data (len 1, 2, 4 or 8) for a read at base+off.
	Read(off uint64, data []byte)
	// Write handles a guest write of data at base+off.
	Write(off uint64, data []byte)
}

// ErrOverlap is returned (wrapped) by Register when the window intersects another.
var ErrOverlap = errors.New("address window overlaps a registered device")

// ErrNotFound is returned (wrapped) by Unregister when nothing is registered at base.
var ErrNotFound = errors.New("no device registered at that base")

type entry struct {
	base, size uint64 // size > 0, base+size-1 does not wrap
	dev        Device
}

func (e *entry) last() uint64 { return e.base + e.size - 1 }

// Bus maps address windows to devices. The zero value is not usable; call New.
type Bus struct {
	name    string
	mu      sync.Mutex              // serialises writers of table
	entries atomic.Pointer[[]entry] // sorted by base, disjoint; never mutated once stored
}

// New returns an empty bus; name appears in error messages ("pio", "mmio").
func New(name string) *Bus {
	b := &Bus{name: name}
	empty := []entry{}
	b.entries.Store(&empty)
	return b
}

// Register places d at [base, base+size). A zero size, a window that wraps past the end
// of the address space, or one that overlaps a registered window is an error.
func (b *Bus) Register(base, size uint64, d Device) error {
	if size == 0 {
		return fmt.Errorf("bus %s: register %#x: zero size", b.name, base)
	}
	if d == nil {
		return fmt.Errorf("bus %s: register %#x: nil device", b.name, base)
	}
	if base+(size-1) < base {
		return fmt.Errorf("bus %s: register %#x+%#x: window wraps the address space", b.name, base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := *b.entries.Load()
	ne := entry{base: base, size: size, dev: d}
	i := sort.Search(len(old), func(i int) bool { return old[i].base > base })
	// Only the neighbours can overlap because the table is sorted and disjoint.
	if i > 0 && old[i-1].last() >= base {
		return fmt.Errorf("bus %s: register %#x+%#x: %w (%#x+%#x)", b.name, base, size, ErrOverlap, old[i-1].base, old[i-1].size)
	}
	if i < len(old) && ne.last() >= old[i].base {
		return fmt.Errorf("bus %s: register %#x+%#x: %w (%#x+%#x)", b.name, base, size, ErrOverlap, old[i].base, old[i].size)
	}
	nt := make([]entry, 0, len(old)+1)
	nt = append(nt, old[:i]...)
	nt = append(nt, ne)
	nt = append(nt, old[i:]...)
	b.entries.Store(&nt)
	return nil
}

// Unregister removes the device registered at exactly base.
func (b *Bus) Unregister(base uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := *b.entries.Load()
	i := sort.Search(len(old), func(i int) bool { return old[i].base >= base })
	if i == len(old) || old[i].base != base {
		return fmt.Errorf("bus %s: unregister %#x: %w", b.name, base, ErrNotFound)
	}
	nt := make([]entry, 0, len(old)-1)
	nt = append(nt, old[:i]...)
	nt = append(nt, old[i+1:]...)
	b.entries.Store(&nt)
	return nil
}

func (b *Bus) find(addr uint64) (*entry, bool) {
	t := *b.entries.Load()
	i := sort.Search(len(t), func(i int) bool { return t[i].last() >= addr })
	if i == len(t) || t[i].base > addr {
		return nil, false
	}
	return &t[i], true
}

// Read dispatches a read at addr. It returns false when no device is there, in which
// case data is filled with all-ones (what an unclaimed x86 bus returns).
func (b *Bus) Read(addr uint64, data []byte) bool {
	e, ok := b.find(addr)
	if !ok {
		for i := range data {
			data[i] = 0xff
		}
		return false
	}
	e.dev.Read(addr-e.base, data)
	return true
}

// Write dispatches a write at addr. It returns false when no device is there (the
// write is dropped).
func (b *Bus) Write(addr uint64, data []byte) bool {
	e, ok := b.find(addr)
	if !ok {
		return false
	}
	e.dev.Write(addr-e.base, data)
	return true
}
