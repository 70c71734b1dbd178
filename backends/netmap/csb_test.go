package netmap

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCSBLayout(t *testing.T) {
	atok, ktoa := make([]byte, 3*CSBEntrySize), make([]byte, 3*CSBEntrySize)
	c, err := NewCSB(atok, ktoa, 3)
	require.NoError(t, err)
	assert.Equal(t, 3, c.NumRings())
	le := binary.LittleEndian
	c.SetHeadCur(2, 11, 12)
	c.SetApplNeedKick(2, 1)
	c.SetSyncFlags(2, ForceReclaim)
	assert.Equal(t, uint32(11), le.Uint32(atok[128+0:]))
	assert.Equal(t, uint32(12), le.Uint32(atok[128+4:]))
	assert.Equal(t, uint32(1), le.Uint32(atok[128+8:]))
	assert.Equal(t, uint32(2), le.Uint32(atok[128+12:]))
	c.SetHwCurTail(1, 21, 22)
	c.SetKernNeedKick(1, 1)
	assert.Equal(t, uint32(21), le.Uint32(ktoa[64+0:]))
	assert.Equal(t, uint32(22), le.Uint32(ktoa[64+4:]))
	assert.Equal(t, uint32(1), le.Uint32(ktoa[64+8:]))
	h, cu, f := c.ReadAtok(2)
	assert.Equal(t, [3]uint32{11, 12, 2}, [3]uint32{h, cu, uint32(f)})
	hc, ht := c.ReadKtoa(1)
	assert.Equal(t, [2]uint32{21, 22}, [2]uint32{hc, ht})
	assert.Zero(t, c.Head(0)+c.HwCur(0)+c.KernNeedKick(2)+c.ApplNeedKick(1))
}

func TestNewCSBRejects(t *testing.T) {
	b := make([]byte, 2*64*CSBEntrySize+4)
	_, err := NewCSB(b[:64], b[64:128], 0)
	assert.Error(t, err)
	_, err = NewCSB(b[:65*64], b[:65*64], 65)
	assert.ErrorContains(t, err, "rings, want 1..64")
	_, err = NewCSB(b[:127], b[128:256], 2)
	assert.ErrorContains(t, err, "need 128 bytes")
	_, err = NewCSB(b[1:129], b[128:256], 2)
	assert.ErrorContains(t, err, "aligned")
	_, err = NewCSB(b[:64*64], b[64*64:128*64], 64)
	assert.NoError(t, err)
}

// TestInitCSB: CREATE writes head = cur = hwcur, hwtail and kern_need_kick = 1 per
// ring (TX idle: hwtail one behind; RX idle: hwtail = hwcur) and leaves the guest's
// appl_need_kick and sync_flags alone.
func TestInitCSB(t *testing.T) {
	p, err := NewPort(PortConfig{Name: "init", TxRings: 2, RxRings: 3, TxSlots: 32, RxSlots: 64})
	require.NoError(t, err)
	defer p.Close()
	n := 5
	c, err := NewCSB(make([]byte, n*CSBEntrySize), make([]byte, n*CSBEntrySize), n)
	require.NoError(t, err)
	for i := 0; i < n; i++ {
		c.SetHeadCur(i, 7, 7) // stale values from a previous session
		c.SetApplNeedKick(i, uint32(i%2))
		c.SetSyncFlags(i, ForceRead)
	}
	require.NoError(t, InitCSB(p, c))
	for i := 0; i < n; i++ {
		tx := i < 2
		wantTail := uint32(0)
		if tx {
			wantTail = 31
		}
		assert.Equal(t, uint32(0), c.Head(i), "ring %d", i)
		assert.Equal(t, uint32(0), c.Cur(i))
		assert.Equal(t, uint32(0), c.HwCur(i))
		assert.Equal(t, wantTail, c.HwTail(i), "ring %d", i)
		assert.Equal(t, uint32(1), c.KernNeedKick(i))
		assert.Equal(t, uint32(i%2), c.ApplNeedKick(i))
		assert.Equal(t, ForceRead, c.SyncFlags(i))
	}
	// After traffic, CREATE reflects the moved state.
	u := p.UserRing(p.TxRing(1))
	u.Advance(5)
	require.NoError(t, p.TxRing(1).Sync(0))
	require.NoError(t, InitCSB(p, c))
	assert.Equal(t, uint32(5), c.Head(1))
	assert.Equal(t, uint32(5), c.HwCur(1))
	assert.Equal(t, uint32(4), c.HwTail(1))

	small, err := NewCSB(make([]byte, 4*CSBEntrySize), make([]byte, 4*CSBEntrySize), 4)
	require.NoError(t, err)
	assert.ErrorContains(t, InitCSB(p, small), "2+3 rings, csb 4")
	assert.Error(t, InitCSB(nil, c))
}
