package netmap

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kickRig is the stepRig's pipe master with a Driver on its CSB: the test runs the
// host loop's ring runs by hand and counts the driver's kicks.
type kickRig struct {
	*stepRig
	d     *Driver
	kicks int
}

func newKickRig(t *testing.T) *kickRig {
	rg := &kickRig{stepRig: newStepRig(t, 64)}
	var err error
	rg.d, err = NewDriver(DriverConfig{Mem: rg.m.Region().Bytes(), Nifp: rg.m.NifpOffset(), CSB: rg.csb,
		Kick: func(int) error { rg.kicks++; return nil }})
	require.NoError(t, err)
	return rg
}

// send publishes n frames through the driver's TX ring.
func (rg *kickRig) send(t *testing.T, n int) {
	tx := rg.d.TxRing(0)
	r := tx.Ring()
	h := r.Head()
	for i := 0; i < n; i++ {
		s := r.Slot(h)
		s.Len, s.Flags = 60, 0
		r.SetSlot(h, s)
		h = r.Next(h)
	}
	r.SetHeadCur(h, h)
	require.NoError(t, tx.Sync(0))
}

func TestKickGenerationSkipsRepeatedKicks(t *testing.T) {
	rg := newKickRig(t)
	// A TX run with nothing to do arms: kern_need_kick = 1 with a new generation.
	rg.l.runRing(rg.tx, true)
	require.Equal(t, uint32(1), rg.csb.KernNeedKick(0))
	g1 := rg.csb.KickGen(0)
	require.NotZero(t, g1)

	rg.send(t, 1)
	assert.Equal(t, 1, rg.kicks, "the host asked: kick")
	rg.send(t, 1)
	rg.send(t, 1)
	assert.Equal(t, 1, rg.kicks, "the host has not run since that kick: no new kick")

	// The run the kick causes sees every frame published since, then arms again.
	rg.l.runRing(rg.tx, true)
	assert.Equal(t, uint32(3), rg.csb.HwCur(0), "the skipped kicks' frames went out")
	assert.Equal(t, 3, rg.slaveRecv())
	g2 := rg.csb.KickGen(0)
	assert.NotEqual(t, g1, g2, "every arm has a new generation")
	rg.send(t, 1)
	assert.Equal(t, 2, rg.kicks, "the host asked again: kick")
}

func TestKickGenerationZeroKicksEverySync(t *testing.T) {
	rg := newKickRig(t)
	// InitCSB (CREATE) publishes generation 0 with kern_need_kick = 1: a host that
	// writes no generation. The driver kicks as netmap's guest does.
	require.Zero(t, rg.csb.KickGen(0))
	for i := 1; i <= 3; i++ {
		rg.send(t, 1)
		assert.Equal(t, i, rg.kicks)
	}
}

func TestKickGenerationForceReclaimAlwaysKicks(t *testing.T) {
	rg := newKickRig(t)
	rg.l.runRing(rg.tx, true)
	rg.send(t, 1)
	require.Equal(t, 1, rg.kicks)
	require.NoError(t, rg.d.TxRing(0).Sync(ForceReclaim))
	assert.Equal(t, 2, rg.kicks)
}

// A generation that came round again (the host armed 2^32 times between two
// syncs) makes a sync skip a kick it needed; Wait pays it before sleeping, so the
// app never sleeps on frames the host was not told about.
func TestKickGenerationWaitPaysSkippedKick(t *testing.T) {
	rg := newKickRig(t)
	rg.l.runRing(rg.tx, true)
	rg.send(t, 1)
	require.Equal(t, 1, rg.kicks)
	// The host ran and armed again, but with the generation our kick answered.
	rg.l.runRing(rg.tx, true)
	rg.csb.SetKickGen(0, rg.d.TxRing(0).kickGen)
	rg.send(t, 62) // what the driver knew was free; its sync reclaims one more
	rg.send(t, 1)  // TX now blocked
	assert.Equal(t, 1, rg.kicks, "the sync skipped the kick it needed")
	require.True(t, rg.d.TxRing(0).skipped)

	ok, err := rg.d.TxRing(0).Wait(0)
	require.NoError(t, err)
	assert.False(t, ok)
	assert.Equal(t, 1, rg.kicks, "Wait(0) does not sleep: nothing owed yet")
	ok, err = rg.d.TxRing(0).Wait(2 * time.Millisecond)
	require.NoError(t, err)
	assert.False(t, ok, "nobody runs the host: still blocked")
	assert.Equal(t, 2, rg.kicks, "Wait kicked once, before it slept")
	// The host now runs (the kick's run): it sees all 63 frames.
	rg.l.runRing(rg.tx, true)
	assert.Equal(t, uint32(63), rg.csb.HwCur(0))
}
