package netmap

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeHost is a driver over a real port's region and a CSB, with no host loop: the
// test plays the host by writing ktoa, and records kicks.
type fakeHost struct {
	p     *Port
	csb   *CSB
	d     *Driver
	kicks []int
	wait  func(ring int, timeout time.Duration) (bool, error)
}

func newFakeHost(t *testing.T, slots int) *fakeHost {
	t.Helper()
	p, err := NewPort(PortConfig{Name: "drv", TxSlots: slots, RxSlots: slots})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	mem := make([]byte, 4*CSBEntrySize)
	csb, err := NewCSB(mem[:2*CSBEntrySize], mem[2*CSBEntrySize:], 2)
	require.NoError(t, err)
	require.NoError(t, InitCSB(p, csb))
	h := &fakeHost{p: p, csb: csb}
	h.d, err = NewDriver(DriverConfig{Mem: p.Region().Bytes(), Nifp: p.NifpOffset(), CSB: csb,
		Kick: func(i int) error { h.kicks = append(h.kicks, i); return nil },
		Wait: func(i int, to time.Duration) (bool, error) { return h.wait(i, to) }})
	require.NoError(t, err)
	return h
}

func TestDriverOpensFromCSB(t *testing.T) {
	h := newFakeHost(t, 64)
	require.Equal(t, 1, h.d.NumTx())
	require.Equal(t, 1, h.d.NumRx())
	tx, rx := h.d.TxRing(0), h.d.RxRing(0)
	assert.Nil(t, h.d.TxRing(1))
	assert.Nil(t, h.d.RxRing(-1))
	assert.Equal(t, 0, tx.Index())
	assert.Equal(t, 1, rx.Index())
	assert.Equal(t, uint32(63), tx.Ring().Space(), "idle TX: every usable slot is free")
	assert.Equal(t, uint32(0), rx.Ring().Space())
}

func TestDriverTxKicksOnlyWhenAsked(t *testing.T) {
	h := newFakeHost(t, 64)
	tx := h.d.TxRing(0)
	tx.Ring().Advance(5)
	require.NoError(t, tx.Sync(0))
	assert.Equal(t, []int{0}, h.kicks, "kern_need_kick is 1 after CREATE: kick")
	assert.Equal(t, uint32(5), h.csb.Head(0))
	assert.Equal(t, uint32(5), h.csb.Cur(0))

	h.csb.SetKernNeedKick(0, 0) // the host loop is running
	tx.Ring().Advance(5)
	require.NoError(t, tx.Sync(0))
	assert.Equal(t, []int{0}, h.kicks, "no kick while the host does not ask")
	assert.Equal(t, uint32(10), h.csb.Head(0))

	require.NoError(t, tx.Sync(0))
	assert.Len(t, h.kicks, 1, "nothing new: no kick")

	require.NoError(t, tx.Sync(ForceReclaim))
	assert.Len(t, h.kicks, 2, "ForceReclaim always kicks")
	assert.Equal(t, ForceReclaim, h.csb.SyncFlags(0))
	assert.Equal(t, uint64(2), tx.Stats().Kicks)
}

func TestDriverTxReclaimsWhenFull(t *testing.T) {
	h := newFakeHost(t, 16)
	tx := h.d.TxRing(0)
	h.csb.SetKernNeedKick(0, 0)
	tx.Ring().Advance(10)
	require.NoError(t, tx.Sync(0))
	// The host consumed 10: it publishes hwcur 10, hwtail 9.
	h.csb.SetHwCurTail(0, 10, 9)
	require.NoError(t, tx.Sync(0))
	assert.Equal(t, uint32(15), tx.Ring().Tail(), "lazy reclaim: tail read back only when full")
	tx.Ring().Advance(5) // head 15 = tail: full
	require.NoError(t, tx.Sync(0))
	assert.Equal(t, uint32(9), tx.Ring().Tail(), "full: hwtail read back")
	assert.Equal(t, uint32(10), tx.Ring().Space())
}

func TestDriverWaitArmsInterrupts(t *testing.T) {
	h := newFakeHost(t, 16)
	rx := h.d.RxRing(0)
	calls := 0
	h.wait = func(ring int, _ time.Duration) (bool, error) {
		calls++
		assert.Equal(t, 1, ring)
		assert.Equal(t, uint32(1), h.csb.ApplNeedKick(1), "armed before blocking")
		h.csb.SetHwCurTail(1, 0, 3) // the host receives 3 frames and interrupts
		return true, nil
	}
	ok, err := rx.Wait(time.Second)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, 1, calls)
	assert.Equal(t, uint32(3), rx.Ring().Space())
	assert.Equal(t, uint32(0), h.csb.ApplNeedKick(1), "disarmed after waking")
	st := rx.Stats()
	assert.Equal(t, uint64(1), st.Waits)
	assert.Equal(t, uint64(1), st.Interrupts)

	// Double check: frames that arrive between the sync and the arming are seen
	// without blocking.
	rx.Ring().Advance(3)
	h.wait = func(int, time.Duration) (bool, error) {
		t.Error("blocked although frames were there")
		return false, nil
	}
	h.csb.SetHwCurTail(1, 0, 5)
	ok, err = rx.Wait(time.Second)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, []int{1}, h.kicks, "released 3 slots with kern_need_kick 1 (as after CREATE): one kick")
}

func TestDriverWaitTimeoutAndErrors(t *testing.T) {
	h := newFakeHost(t, 16)
	rx := h.d.RxRing(0)
	h.wait = func(int, time.Duration) (bool, error) { return false, nil }
	ok, err := rx.Wait(time.Millisecond)
	require.NoError(t, err)
	assert.False(t, ok)
	assert.Equal(t, uint32(0), h.csb.ApplNeedKick(1), "a timed-out wait leaves interrupts off")
	ok, err = rx.Wait(0)
	require.NoError(t, err)
	assert.False(t, ok)
	h.wait = func(int, time.Duration) (bool, error) { return false, errors.New("boom") }
	_, err = rx.Wait(time.Second)
	assert.ErrorContains(t, err, "boom")
}

func TestDriverRxKicksWhenHostAsks(t *testing.T) {
	h := newFakeHost(t, 16)
	rx := h.d.RxRing(0)
	h.csb.SetHwCurTail(1, 0, 15) // the host filled the ring and asks for a kick
	h.csb.SetKernNeedKick(1, 1)
	require.NoError(t, rx.Sync(0))
	assert.Empty(t, h.kicks, "nothing released yet")
	rx.Ring().Advance(4)
	require.NoError(t, rx.Sync(0))
	assert.Equal(t, []int{1}, h.kicks)
	assert.Equal(t, uint32(4), h.csb.Head(1))
}

// TestDriverAttackUserHead: a bad head/cur from the ring's own user reinitialises the
// user ring; nothing reaches the CSB.
func TestDriverAttackUserHead(t *testing.T) {
	h := newFakeHost(t, 16)
	tx := h.d.TxRing(0)
	tx.Ring().Advance(3)
	require.NoError(t, tx.Sync(0))
	for _, hc := range [][2]uint32{{99, 99}, {3, 99}, {2, 2}, {5, 4}} {
		tx.Ring().SetHeadCur(hc[0], hc[1])
		err := tx.Sync(0)
		require.ErrorIs(t, err, ErrRingReinit, "head %d cur %d", hc[0], hc[1])
		assert.Equal(t, uint32(3), tx.Ring().Head())
		assert.Equal(t, uint32(3), tx.Ring().Cur())
		assert.Equal(t, uint32(3), h.csb.Head(0))
	}
	assert.Equal(t, uint64(4), tx.Stats().Reinits)
}

// TestDriverAttackHostValues: a host publishing indices outside the ring is counted,
// never followed.
func TestDriverAttackHostValues(t *testing.T) {
	h := newFakeHost(t, 16)
	rx := h.d.RxRing(0)
	h.csb.SetHwCurTail(1, 1000, 77)
	require.NoError(t, rx.Sync(0))
	assert.Equal(t, uint32(0), rx.Ring().Tail())
	assert.Positive(t, rx.Stats().Errors)
}

func TestNewDriverRejects(t *testing.T) {
	h := newFakeHost(t, 16)
	mem := h.p.Region().Bytes()
	kick := func(int) error { return nil }
	_, err := NewDriver(DriverConfig{Mem: mem, Nifp: h.p.NifpOffset(), Kick: kick})
	assert.ErrorContains(t, err, "no CSB")
	_, err = NewDriver(DriverConfig{Mem: mem, Nifp: h.p.NifpOffset(), CSB: h.csb})
	assert.ErrorContains(t, err, "no Kick")
	_, err = NewDriver(DriverConfig{Mem: mem, Nifp: uint64(len(mem)), CSB: h.csb, Kick: kick})
	assert.Error(t, err)
	c3, err := NewCSB(make([]byte, 192), make([]byte, 192), 3)
	require.NoError(t, err)
	_, err = NewDriver(DriverConfig{Mem: mem, Nifp: h.p.NifpOffset(), CSB: c3, Kick: kick})
	assert.ErrorContains(t, err, "1+1 rings, the CSB 3")
	h.csb.SetHeadCur(0, 500, 500)
	_, err = NewDriver(DriverConfig{Mem: mem, Nifp: h.p.NifpOffset(), CSB: h.csb, Kick: kick})
	assert.ErrorContains(t, err, "outside 16 slots")
}
