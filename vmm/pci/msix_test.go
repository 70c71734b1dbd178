package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// maskRouter is a MaskNotifier router: it logs every call in order, holds interrupts
// raised "behind MSIX's back" (held), and can be told to fail.
type maskRouter struct {
	mu        sync.Mutex
	log       []string
	live      map[int]bool
	held      map[int]bool
	askedLive []int // PendingMSI calls for vectors it had been told were live
	repeats   int   // MaskChanged calls that changed nothing
	maskFails int   // MaskChanged calls failed on purpose
	failRoute bool
	failMask  bool
}

func newMaskRouter() *maskRouter {
	return &maskRouter{live: map[int]bool{}, held: map[int]bool{}}
}

func (r *maskRouter) RouteMSI(v int, addr uint64, data uint32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failRoute {
		return errors.New("injected route failure")
	}
	r.log = append(r.log, fmt.Sprintf("route %d %#x", v, data))
	return nil
}

func (r *maskRouter) FireMSI(v int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, fmt.Sprintf("fire %d", v))
	return nil
}

func (r *maskRouter) MaskChanged(v int, masked bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failMask {
		r.maskFails++
		return errors.New("injected mask failure")
	}
	if r.live[v] == !masked {
		r.repeats++
	}
	r.live[v] = !masked
	if masked {
		r.log = append(r.log, fmt.Sprintf("mask %d", v))
	} else {
		r.log = append(r.log, fmt.Sprintf("unmask %d", v))
	}
	return nil
}

func (r *maskRouter) PendingMSI(v int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live[v] {
		r.askedLive = append(r.askedLive, v)
	}
	return r.held[v]
}

// take returns the log so far and clears it.
func (r *maskRouter) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.log
	r.log = nil
	return l
}

func (r *maskRouter) hold(v int, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held[v] = on
}

func maskSpec(r MSIRouter) Spec {
	return Spec{BARs: [6]*BAR{nil, {Kind: BARMem32, Size: 0x1000}},
		MSIX: &MSIXSpec{Vectors: 3, BAR: 1, TableOffset: 0x800, PBAOffset: 0xc00, Router: r}}
}

// TestMSIXMaskNotifier walks every way a vector's effective mask changes (entry bit,
// function mask, enable, a failed re-route) and checks the notifier hears each change
// once, in order with the route and the pending delivery.
func TestMSIXMaskNotifier(t *testing.T) {
	g := newRig(t)
	r := newMaskRouter()
	f, err := g.root.Add(1, maskSpec(r))
	require.NoError(t, err)
	m := f.MSIX()
	bar, _ := f.BARAddr(1)
	tbl, pba := bar+0x800, bar+0xc00
	ctrl := func(v uint16) { g.cfgWrite(1, CapOffset+2, 2, uint32(v)) }

	// Programmed and unmasked while MSI-X is off: still masked, no calls.
	mmioWrite32(g.mmio, tbl, 0xfee0_0000)
	mmioWrite32(g.mmio, tbl+8, 0x41)
	mmioWrite32(g.mmio, tbl+12, 0)
	require.NoError(t, m.Fire(0)) // a Fire while masked still sets MSIX's own bit
	assert.Empty(t, r.take())

	// Enable: the route first, then unmask, then MSIX's own pending bit goes out.
	ctrl(MSIXCtrlEnable)
	assert.Equal(t, []string{"route 0 0x41", "unmask 0", "fire 0"}, r.take())
	assert.False(t, m.Pending(0))

	// Rewriting a live entry re-routes without a mask change.
	mmioWrite32(g.mmio, tbl+8, 0x42)
	assert.Equal(t, []string{"route 0 0x42"}, r.take())

	// Entry bit: mask, unmask (already routed: no route call).
	mmioWrite32(g.mmio, tbl+12, 1)
	assert.Equal(t, []string{"mask 0"}, r.take())
	mmioWrite32(g.mmio, tbl+12, 1) // writing the same bit again changes nothing
	assert.Empty(t, r.take())
	mmioWrite32(g.mmio, tbl+12, 0)
	assert.Equal(t, []string{"unmask 0"}, r.take())

	// Function mask and enable act on live vectors only (1 and 2 stay masked).
	ctrl(MSIXCtrlEnable | MSIXCtrlMaskAll)
	assert.Equal(t, []string{"mask 0"}, r.take())
	mmioWrite32(g.mmio, tbl+16+12, 0) // unmasking an entry under MASKALL: still masked
	assert.Empty(t, r.take())
	ctrl(MSIXCtrlEnable)
	assert.Equal(t, []string{"unmask 0", "route 1 0x0", "unmask 1"}, r.take())
	ctrl(0)
	assert.Equal(t, []string{"mask 0", "mask 1"}, r.take())
	ctrl(MSIXCtrlEnable)
	assert.Equal(t, []string{"unmask 0", "unmask 1"}, r.take())

	// A rewrite whose route fails takes the vector out of service (its old message
	// must not be used); the next accepted route brings it back.
	r.failRoute = true
	mmioWrite32(g.mmio, tbl+8, 0x43)
	assert.Equal(t, []string{"mask 0"}, r.take())
	r.failRoute = false
	mmioWrite32(g.mmio, tbl+8, 0x44)
	assert.Equal(t, []string{"route 0 0x44", "unmask 0"}, r.take())

	// A failed MaskChanged is counted and retried at the next write to the vector.
	r.failMask = true
	mmioWrite32(g.mmio, tbl+12, 1)
	assert.Empty(t, r.take())
	assert.Equal(t, uint64(2), m.errs, "the failed route and the failed mask")
	r.failMask = false
	mmioWrite32(g.mmio, tbl+12, 1)
	assert.Equal(t, []string{"mask 0"}, r.take())

	// PBA: what the router holds for a masked vector shows; a live vector's bit is
	// MSIX's own only, and the router is never asked about it.
	r.hold(0, true)
	r.hold(1, true)
	p, _ := mmioRead32(g.mmio, pba)
	assert.Equal(t, uint32(1), p, "vector 0 masked and held; vector 1 live")
	assert.True(t, m.Pending(0))
	assert.False(t, m.Pending(1))
	assert.Empty(t, r.askedLive)
	r.hold(0, false)
	p, _ = mmioRead32(g.mmio, pba)
	assert.Zero(t, p)
	// Unmasking does not fire for a held interrupt: delivering it is the router's job
	// (MaskChanged), so it is not delivered twice.
	mmioWrite32(g.mmio, tbl+12, 0)
	assert.Equal(t, []string{"unmask 0"}, r.take())
	assert.Zero(t, r.repeats)
}

// TestMSIXWithoutMaskNotifier: a plain router is never asked about masks, and a
// masked vector's PBA bit is only what Fire set.
func TestMSIXWithoutMaskNotifier(t *testing.T) {
	g := newRig(t)
	r := &fakeRouter{}
	f, err := g.root.Add(1, maskSpec(r))
	require.NoError(t, err)
	assert.Nil(t, f.MSIX().mn)
	// A MaskNotifier is found through the Router whatever wraps it.
	f2, err := g.root.Add(2, maskSpec(struct{ *maskRouter }{newMaskRouter()}))
	require.NoError(t, err)
	assert.NotNil(t, f2.MSIX().mn)
}

// FuzzMSIXMaskNotifier feeds arbitrary table, PBA and control writes: whatever the
// order, the notifier hears alternating changes per vector and its view always
// matches MSIX's (a vector is live exactly while unmasked and routed).
func FuzzMSIXMaskNotifier(f *testing.F) {
	f.Add([]byte{0, 0x0c, 0, 0, 0, 0, 1, 0, 0x80, 0, 0, 0, 1, 0, 0xc0, 0, 0, 0})
	f.Add([]byte{0, 0x1c, 1, 0, 0, 0, 1, 0, 0x80, 0, 0, 0, 0, 0x08, 0x08, 0x41, 0, 0, 2, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, prog []byte) {
		g := newRig(t)
		r := newMaskRouter()
		fn, err := g.root.Add(1, maskSpec(r))
		require.NoError(t, err)
		bar, _ := fn.BARAddr(1)
		m := fn.MSIX()
		for k := 0; len(prog) >= 6; k++ {
			op, off, val := prog[0], uint64(binary.LittleEndian.Uint16(prog[1:3]))&0xfff, binary.LittleEndian.Uint32(prog[2:6])
			prog = prog[6:]
			switch op % 4 {
			case 0, 1:
				mmioWrite32(g.mmio, bar+off&^3, val)
			case 2:
				fn.WriteConfig(CapOffset+2, []byte{byte(val), byte(val >> 8)})
			case 3:
				r.mu.Lock()
				r.failRoute, r.failMask = val&1 != 0, val&2 != 0
				r.mu.Unlock()
			}
			_ = m.Fire(int(val % 3))
			mmioRead32(g.mmio, bar+0xc00)
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		assert.Zero(t, r.repeats)
		assert.Empty(t, r.askedLive)
		m.mu.Lock()
		defer m.mu.Unlock()
		for v := range m.entries {
			assert.Equal(t, m.entries[v].live, r.live[v], "vector %d", v)
			if r.maskFails == 0 {
				// Unless told of a failure, the notifier is in step with the table.
				assert.Equal(t, !m.masked(v) && m.entries[v].routed, m.entries[v].live, "vector %d", v)
			}
		}
	})
}
