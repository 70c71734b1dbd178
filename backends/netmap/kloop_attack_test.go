package netmap

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/notify"
)

// stepRig is a host loop without its worker over the master end of a pipe: tests and
// the fuzz target run its rings directly, in the test goroutine, as the worker would.
// The slave end is a plain netmap user (Kring.Sync on its ring header).
type stepRig struct {
	t      testing.TB
	m, s   *Port
	csb    *CSB
	l      *Kloop
	tx, rx *kloopRing
	utx    *Ring // the app's view of m's TX ring (slots only: head/cur go to the CSB)
	stx    *Ring // slave TX and RX user views
	srx    *Ring
	num    uint32
	logs   int
}

func newStepRig(t testing.TB, slots int) *stepRig {
	t.Helper()
	m, s, err := NewPipe("st", "0", PortConfig{TxSlots: slots})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close(); m.Close() })
	mem := make([]byte, 4*CSBEntrySize)
	csb, err := NewCSB(mem[:2*CSBEntrySize], mem[2*CSBEntrySize:], 2)
	require.NoError(t, err)
	require.NoError(t, InitCSB(m, csb))
	ks, err := csbKrings(m, csb)
	require.NoError(t, err)
	rg := &stepRig{t: t, m: m, s: s, csb: csb, num: uint32(slots),
		utx: m.UserRing(m.TxRing(0)), stx: s.UserRing(s.TxRing(0)), srx: s.UserRing(s.RxRing(0))}
	rg.l = newKloop(KloopConfig{Name: "step", Port: m, CSB: csb, Mode: notify.Block,
		Logf: func(string, ...any) { rg.logs++ }}, ks)
	rg.tx, rg.rx = rg.l.rings[0], rg.l.rings[1]
	return rg
}

// fillTx writes n slots from the CSB head on with len and flags, keeping their
// buffers, and publishes the new head.
func (rg *stepRig) fillTx(n int, length, flags uint16) uint32 {
	h := rg.csb.Head(0)
	for i := 0; i < n; i++ {
		sl := rg.utx.Slot(h)
		sl.Len, sl.Flags = length, flags
		rg.utx.SetSlot(h, sl)
		h = rg.utx.Next(h)
	}
	rg.csb.SetHeadCur(0, h, h)
	return h
}

// slaveRecv rxsyncs the slave, counts and releases what arrived.
func (rg *stepRig) slaveRecv() int {
	require.NoError(rg.t, rg.s.RxRing(0).Sync(0))
	h, tl := rg.srx.Head(), rg.srx.Tail()
	n := int((tl + rg.num - h) % rg.num)
	rg.srx.SetHeadCur(tl, tl)
	require.NoError(rg.t, rg.s.RxRing(0).Sync(0))
	return n
}

// checkPublished asserts the ktoa entry of ring r equals the kring state.
func (rg *stepRig) checkPublished(r *kloopRing) {
	st := r.k.State()
	assert.Equal(rg.t, st.HwCur, rg.csb.HwCur(r.i), "ktoa hwcur")
	assert.Equal(rg.t, st.HwTail, rg.csb.HwTail(r.i), "ktoa hwtail")
}

func TestKloopAttackHeadBeyondRing(t *testing.T) {
	for _, c := range []struct {
		name      string
		ring      int
		head, cur uint32
	}{
		{"tx head", 0, 1000, 1000},
		{"tx cur", 0, 3, 1000},
		{"tx head max", 0, ^uint32(0), 0},
		{"rx head", 1, 64, 64},
		{"rx cur", 1, 0, 999},
	} {
		t.Run(c.name, func(t *testing.T) {
			rg := newStepRig(t, 64)
			r := rg.l.rings[c.ring]
			rg.csb.SetHeadCur(c.ring, c.head, c.cur)
			work, more := rg.l.runRing(r, true)
			assert.False(t, work)
			assert.False(t, more)
			assert.Equal(t, uint64(1), rg.l.Stats()[c.ring].Reinits)
			assert.Equal(t, uint64(1), r.k.Stats().Reinits)
			assert.Equal(t, uint32(1), rg.csb.KernNeedKick(c.ring), "the app must be able to kick again")
			assert.Equal(t, 1, rg.logs)
			rg.checkPublished(r)
			// A second bad run is counted but not logged again within the second.
			rg.l.runRing(r, true)
			assert.Equal(t, uint64(2), rg.l.Stats()[c.ring].Reinits)
			assert.Equal(t, 1, rg.logs)
			// The app recovers by publishing the state it was given back.
			hw := rg.csb.HwCur(c.ring)
			rg.csb.SetHeadCur(c.ring, hw, hw)
			rg.l.runRing(r, true)
			assert.Equal(t, uint64(2), rg.l.Stats()[c.ring].Reinits)
		})
	}
}

func TestKloopAttackHeadBackwards(t *testing.T) {
	rg := newStepRig(t, 64)
	// TX: fill the pipe peer (63 slots), then queue 10 more that stay pending:
	// hwcur 63, head 9, hwtail 62. A head outside [9, 62] moves back past slots the
	// backend still holds. (With nothing pending, hwtail = hwcur-1 and every head
	// is a legal forward move, in netmap as here.)
	rg.fillTx(63, 60, 0)
	rg.l.runRing(rg.tx, true)
	require.Equal(t, uint32(63), rg.csb.HwCur(0))
	rg.fillTx(10, 60, 0)
	rg.l.runRing(rg.tx, true)
	require.Equal(t, uint32(63), rg.csb.HwCur(0))
	rg.csb.SetHeadCur(0, 5, 5)
	rg.l.runRing(rg.tx, true)
	assert.Equal(t, uint64(1), rg.l.Stats()[0].Reinits)
	assert.Equal(t, uint32(1), rg.csb.KernNeedKick(0))
	rg.checkPublished(rg.tx)
	// Reinit forgot the pending slots (rhead = hwcur), as netmap's does.
	assert.Equal(t, uint32(63), rg.m.TxRing(0).State().RHead)
	// The app republishes head 9: the ten slots go out.
	assert.Equal(t, 63, rg.slaveRecv())
	rg.csb.SetHeadCur(0, 9, 9)
	rg.l.runRing(rg.tx, true)
	assert.Equal(t, uint32(9), rg.csb.HwCur(0))
	assert.Equal(t, 10, rg.slaveRecv())
	assert.Zero(t, rg.m.TxRing(0).Stats().Dropped)

	// RX: the app releases slots it never received (head beyond hwtail), then
	// moves head back.
	rg.stx.SetSlot(rg.stx.Head(), Slot{BufIdx: rg.stx.Slot(rg.stx.Head()).BufIdx, Len: 60})
	rg.stx.Advance(1)
	require.NoError(t, rg.s.TxRing(0).Sync(0))
	rg.l.runRing(rg.rx, true)
	require.Equal(t, uint32(1), rg.csb.HwTail(1))
	rg.csb.SetHeadCur(1, 5, 5)
	rg.l.runRing(rg.rx, true)
	assert.Equal(t, uint64(1), rg.l.Stats()[1].Reinits)
	rg.csb.SetHeadCur(1, 1, 1)
	rg.l.runRing(rg.rx, true)
	rg.csb.SetHeadCur(1, 0, 0)
	rg.l.runRing(rg.rx, true)
	assert.Equal(t, uint64(2), rg.l.Stats()[1].Reinits)
	assert.Equal(t, uint32(1), rg.csb.HwCur(1))
}

func TestKloopAttackBadBufIdx(t *testing.T) {
	rg := newStepRig(t, 64)
	h := rg.csb.Head(0)
	bad := []uint32{0, 1, rg.m.Region().NumBufs(), ^uint32(0)}
	for _, b := range bad {
		rg.utx.SetSlot(h, Slot{BufIdx: b, Len: 60})
		h = rg.utx.Next(h)
	}
	rg.csb.SetHeadCur(0, h, h)
	rg.l.runRing(rg.tx, true)
	assert.Equal(t, uint64(len(bad)), rg.m.TxRing(0).Stats().BadSlots)
	assert.Equal(t, h, rg.csb.HwCur(0), "bad slots are consumed, not left to block the ring")
	assert.Zero(t, rg.l.Stats()[0].Reinits)
	// The pipe delivers them as empty frames and keeps both sides' buffers.
	require.NoError(t, rg.s.RxRing(0).Sync(0))
	for i := uint32(0); i < uint32(len(bad)); i++ {
		assert.Zero(t, rg.srx.Slot(i).Len)
		assert.True(t, rg.s.Region().ValidBuf(rg.srx.Slot(i).BufIdx))
	}
}

func TestKloopAttackLenAboveBuffer(t *testing.T) {
	rg := newStepRig(t, 64)
	bs := rg.m.Region().BufSize()
	rg.fillTx(3, uint16(bs+1), 0)
	rg.fillTx(1, 0xffff, 0)
	rg.fillTx(1, 60, 0)
	rg.l.runRing(rg.tx, true)
	assert.Equal(t, uint64(4), rg.m.TxRing(0).Stats().BadSlots)
	assert.Equal(t, uint32(5), rg.csb.HwCur(0))
	require.NoError(t, rg.s.RxRing(0).Sync(0))
	lens := []uint16{}
	for i := uint32(0); i < 5; i++ {
		lens = append(lens, rg.srx.Slot(i).Len)
	}
	assert.Equal(t, []uint16{0, 0, 0, 0, 60}, lens, "only the good frame carries data")
}

func TestKloopAttackEndlessMoreFrag(t *testing.T) {
	rg := newStepRig(t, 64)
	// A chain still open at head stays pending (the app may finish it)...
	rg.fillTx(10, 60, NSMoreFrag)
	work, more := rg.l.runRing(rg.tx, true)
	assert.False(t, more)
	_ = work
	assert.Equal(t, uint32(0), rg.csb.HwCur(0))
	assert.Equal(t, 0, rg.slaveRecv())
	// ...until it fills every slot the app has: then it can never end and is dropped.
	rg.fillTx(int(rg.num)-1-10, 60, NSMoreFrag)
	require.Equal(t, rg.num-1, rg.csb.Head(0))
	rg.l.runRing(rg.tx, true)
	assert.Equal(t, uint64(1), rg.m.TxRing(0).Stats().Dropped)
	assert.Equal(t, rg.num-1, rg.csb.HwCur(0))
	assert.Equal(t, 0, rg.slaveRecv())
	// The ring works afterwards.
	rg.fillTx(3, 60, 0)
	rg.l.runRing(rg.tx, true)
	assert.Equal(t, 3, rg.slaveRecv())
	assert.Zero(t, rg.l.Stats()[0].Reinits)
}

// TestKloopTxFullWaitsForBackend: with the pipe peer full, the TX run stops without
// losing frames and resumes when the peer releases slots (the TX kring's notify).
func TestKloopTxFullWaitsForBackend(t *testing.T) {
	rg := newStepRig(t, 8)
	var notified int
	rg.m.TxRing(0).SetNotify(func() { notified++ })
	defer rg.m.TxRing(0).SetNotify(nil)
	rg.fillTx(7, 60, 0)
	rg.l.runRing(rg.tx, true)
	assert.Equal(t, uint32(7), rg.csb.HwCur(0))
	rg.fillTx(5, 60, 0) // the peer holds 7 of 7 usable slots: these stay pending
	rg.l.runRing(rg.tx, true)
	assert.Equal(t, uint32(7), rg.csb.HwCur(0), "nothing moves into a full peer")
	assert.Equal(t, uint32(1), rg.csb.KernNeedKick(0))
	assert.Equal(t, 7, rg.slaveRecv())
	assert.Positive(t, notified, "the peer's release notifies the TX ring")
	rg.l.runRing(rg.tx, true)
	assert.Equal(t, (7+5)%rg.num, rg.csb.HwCur(0))
	assert.Equal(t, 5, rg.slaveRecv())
	assert.Zero(t, rg.m.TxRing(0).Stats().Dropped)
}

// TestKloopForceReclaim: the TX run asks the backend to reclaim when half the ring or
// less is free.
func TestKloopForceReclaim(t *testing.T) {
	rg := newStepRig(t, 16)
	var seen []SyncFlags
	k := rg.m.TxRing(0)
	k.SetSync(func(k *Kring, f SyncFlags) error {
		seen = append(seen, f)
		return nil // consume nothing: the app's slots stay with the backend
	})
	rg.fillTx(4, 60, 0)
	rg.l.runRing(rg.tx, true)
	require.NotEmpty(t, seen)
	assert.Zero(t, seen[len(seen)-1]&ForceReclaim, "11 of 15 free: no reclaim")
	rg.fillTx(8, 60, 0) // checked against the state before: 11 free, no reclaim
	rg.l.runRing(rg.tx, true)
	assert.Zero(t, seen[len(seen)-1]&ForceReclaim, "11 of 15 free: no reclaim")
	seen = nil
	rg.fillTx(1, 60, 0)
	rg.l.runRing(rg.tx, true)
	require.NotEmpty(t, seen)
	assert.NotZero(t, seen[0]&ForceReclaim, "3 free: reclaim")
}

// TestKloopRxArmsKickWhenFull: with every RX slot held by the app, the loop asks for
// a kick; once the app releases slots, the run frees them to the backend.
func TestKloopRxArmsKickWhenFull(t *testing.T) {
	rg := newStepRig(t, 8)
	h := rg.stx.Head()
	for i := 0; i < 7; i++ {
		sl := rg.stx.Slot(h)
		sl.Len = 60
		rg.stx.SetSlot(h, sl)
		h = rg.stx.Next(h)
	}
	rg.stx.SetHeadCur(h, h)
	require.NoError(t, rg.s.TxRing(0).Sync(0))
	rg.l.runRing(rg.rx, true)
	assert.Equal(t, uint32(7), rg.csb.HwTail(1))
	assert.Equal(t, uint32(1), rg.csb.KernNeedKick(1), "no RX slot left: kick me when you release")
	rg.csb.SetHeadCur(1, 7, 7)
	rg.l.runRing(rg.rx, true)
	assert.Equal(t, uint32(7), rg.csb.HwCur(1))
	assert.Equal(t, uint32(0), rg.csb.KernNeedKick(1), "slots free again: no kicks needed")
}

// TestKloopRecreateWithPendingTx: CREATE again (InitCSB, a new loop) while TX slots of
// the old session are still pending in a full pipe peer: the new session starts clean,
// with no reinit, and its frames go out once the peer drains.
func TestKloopRecreateWithPendingTx(t *testing.T) {
	rg := newStepRig(t, 16)
	rg.fillTx(15, 60, 0)
	rg.l.runRing(rg.tx, true)
	rg.fillTx(5, 60, 0)
	rg.l.runRing(rg.tx, true)
	require.Equal(t, uint32(15), rg.csb.HwCur(0))
	require.NotEqual(t, rg.csb.HwCur(0), rg.m.TxRing(0).State().RHead, "5 slots pending")

	require.NoError(t, InitCSB(rg.m, rg.csb))
	assert.Equal(t, uint32(15), rg.csb.Head(0))
	assert.Equal(t, uint32(14), rg.csb.HwTail(0))
	ks, err := csbKrings(rg.m, rg.csb)
	require.NoError(t, err)
	l := newKloop(KloopConfig{Name: "again", Port: rg.m, CSB: rg.csb, Mode: notify.Block}, ks)
	l.runRing(l.rings[0], true)
	assert.Zero(t, l.Stats()[0].Reinits)
	assert.Equal(t, 15, rg.slaveRecv())
	rg.fillTx(3, 60, 0)
	l.runRing(l.rings[0], true)
	assert.Equal(t, 3, rg.slaveRecv())
	assert.Zero(t, l.Stats()[0].Reinits)
}
