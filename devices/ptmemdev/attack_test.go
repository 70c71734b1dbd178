package ptmemdev

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/vmm/pci"
)

// Attack cases: each hostile input is refused or ignored, counted, and leaves the
// device usable; none panics or blocks.

func TestAttackCSBOutsideRAM(t *testing.T) {
	r := newRig(t, rigOpts{tx: 2, rx: 2})
	for _, gpa := range []uint64{
		testRAM,                    // just past RAM
		testRAM - 64,               // starts in RAM, ends outside
		0xffff_ffff_ffff_ffc0,      // wraps around the address space
		0x1_0000_0000 + testGH,     // above 4 GiB, nothing there
		uint64(pci.DefaultMemBase), // the PCI hole
	} {
		r.csb(gpa, testHG)
		assert.Equal(t, errFault, r.ptctl(PtctlCreate), "CSB at %#x", gpa)
		assert.False(t, r.d.Running())
	}
	assert.Equal(t, uint64(5), r.d.Stats().CSBRefused)
	assert.Equal(t, uint64(5), r.d.Stats().Refused)
	r.csb(testGH, testHG)
	assert.Zero(t, r.ptctl(PtctlCreate), "a good address afterwards works")
}

// TestAttackCSBOverBAR1: the CSB placed on the memdev's BAR1 (the port's own rings) or
// on ptnet's registers is not RAM, so it is refused.
func TestAttackCSBOverBAR1(t *testing.T) {
	r := newRig(t, rigOpts{})
	bar1 := r.bar(r.mdFn, MemBAR)
	r.csb(bar1, testHG)
	assert.Equal(t, errFault, r.ptctl(PtctlCreate))
	r.csb(testGH, bar1+4096)
	assert.Equal(t, errFault, r.ptctl(PtctlCreate))
	r.csb(testGH, r.bar(r.fn, RegsBAR))
	assert.Equal(t, errFault, r.ptctl(PtctlCreate))
	assert.Equal(t, uint64(3), r.d.Stats().CSBRefused)
	assert.False(t, r.d.Running())
}

func TestAttackCSBMisaligned(t *testing.T) {
	r := newRig(t, rigOpts{})
	r.csb(testGH+4, testHG)
	assert.Equal(t, errFault, r.ptctl(PtctlCreate))
	r.csb(testGH, testHG+1)
	assert.Equal(t, errFault, r.ptctl(PtctlCreate))
	assert.Equal(t, uint64(2), r.d.Stats().CSBRefused)
}

// TestAttackCSBOverlap: both arrays at one address would let the guest's atok writes
// alias the host's ktoa ones: refused.
func TestAttackCSBOverlap(t *testing.T) {
	r := newRig(t, rigOpts{tx: 2, rx: 2})
	r.csb(testGH, testGH)
	assert.Equal(t, errInval, r.ptctl(PtctlCreate))
	r.csb(testGH, testGH+64)
	assert.Equal(t, errInval, r.ptctl(PtctlCreate), "partial overlap")
	r.csb(testGH, testGH+4*64)
	assert.Zero(t, r.ptctl(PtctlCreate), "adjacent arrays are fine")
}

func TestAttackCreateWithoutCSB(t *testing.T) {
	r := newRig(t, rigOpts{})
	assert.Equal(t, errNoCSB, r.ptctl(PtctlCreate))
	r.wr(RegCSBGHBAL, testGH)
	assert.Equal(t, errNoCSB, r.ptctl(PtctlCreate), "only one array")
	assert.False(t, r.d.Running())
	assert.Equal(t, uint64(2), r.d.Stats().Refused)
}

// TestAttackCreateTwice: a second CREATE answers EBUSY and leaves the running loop
// (one set of goroutines) alone.
func TestAttackCreateTwice(t *testing.T) {
	r := newRig(t, rigOpts{tx: 2, rx: 2})
	base := runtime.NumGoroutine()
	r.csb(testGH, testHG)
	require.Zero(t, r.ptctl(PtctlCreate))
	running := runtime.NumGoroutine()
	assert.Equal(t, errBusy, r.ptctl(PtctlCreate))
	assert.Equal(t, errBusy, r.ptctl(PtctlCreate))
	assert.True(t, r.d.Running())
	assert.LessOrEqual(t, runtime.NumGoroutine(), running, "no second loop")
	assert.Equal(t, uint64(1), r.d.Stats().Creates)
	assert.Equal(t, uint64(2), r.d.Stats().Refused)
	assert.Zero(t, r.ptctl(PtctlDelete))
	goroutinesBack(t, base)
}

// TestAttackDeleteWithoutCreate: answered 0 (netmap's guest sends DELETE at remove
// whether or not it registered), counted, nothing else happens.
func TestAttackDeleteWithoutCreate(t *testing.T) {
	r := newRig(t, rigOpts{})
	for range 3 {
		assert.Zero(t, r.ptctl(PtctlDelete))
	}
	st := r.d.Stats()
	assert.Equal(t, uint64(3), st.IdleDeletes)
	assert.Zero(t, st.Stops)
	assert.Zero(t, st.Refused)
}

func TestAttackPtctlGarbage(t *testing.T) {
	r := newRig(t, rigOpts{})
	r.csb(testGH, testHG)
	for _, cmd := range []uint32{0, 3, 0xff, 0x8000_0001, 0xffff_ffff} {
		assert.Equal(t, errInval, r.ptctl(cmd), "command %#x", cmd)
	}
	assert.False(t, r.d.Running())
	assert.Equal(t, uint64(5), r.d.Stats().Refused)
	assert.Zero(t, r.ptctl(PtctlCreate))
	assert.Equal(t, errInval, r.ptctl(7), "garbage while running")
	assert.True(t, r.d.Running(), "garbage does not stop the loop")
}

// TestAttackKickBeyondRings: KICK registers past the last ring are ignored and
// counted; no ring's eventfd is signalled.
func TestAttackKickBeyondRings(t *testing.T) {
	r := newRig(t, rigOpts{tx: 1, rx: 1, noBells: true})
	for i := uint64(2); i < (PtnetRegsSize-RegKickBase)/4; i += 7 {
		r.wr(RegKickBase+4*i, 1)
	}
	for _, ev := range r.d.kicks {
		v, err := ev.Read()
		require.NoError(t, err)
		assert.Zero(t, v, "no ring kicked")
	}
	assert.Equal(t, uint64(((PtnetRegsSize-RegKickBase)/4-2+6)/7), r.d.Stats().BadKicks)
	assert.Zero(t, r.d.Stats().TrappedKicks)
}

// TestAttackAccessSizes: byte, word and qword accesses and misaligned dwords are not
// registers: reads give zero, writes change nothing.
func TestAttackAccessSizes(t *testing.T) {
	r := newRig(t, rigOpts{vnet: true})
	base := r.bar(r.fn, RegsBAR)
	for _, a := range []struct {
		off uint64
		n   int
	}{{RegPtctl, 1}, {RegPtctl, 2}, {RegPtctl, 8}, {RegPtctl + 1, 4}, {RegPtfeat + 2, 2}, {RegKickBase, 2}} {
		buf := make([]byte, a.n)
		for i := range buf {
			buf[i] = 0xff
		}
		r.mmio.Write(base+a.off, buf)
		r.mmio.Read(base+a.off, buf)
		assert.Equal(t, make([]byte, a.n), buf, "%d bytes at %d", a.n, a.off)
	}
	assert.Zero(t, r.rd(RegPtctl))
	assert.Zero(t, r.rd(RegPtfeat))
	assert.False(t, r.d.Running())
	assert.Equal(t, uint64(12), r.d.Stats().BadAccesses)
}

// TestAttackLogBudget: a guest spamming bad commands cannot flood the log.
func TestAttackLogBudget(t *testing.T) {
	r := newRig(t, rigOpts{})
	for range 10 * logBudget {
		r.wr(RegPtctl, 99)
	}
	r.logMu.Lock()
	n := len(r.logs)
	r.logMu.Unlock()
	assert.Equal(t, logBudget, n)
	assert.Equal(t, uint64(10*logBudget), r.d.Stats().Refused)
}
