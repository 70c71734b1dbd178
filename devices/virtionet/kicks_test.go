package virtionet

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestKickCounts: every doorbell write on a queue is one kick of that queue, TX
// and RX apart, per pair; the control queue's count in neither. The kicks carry
// no work as well (a kick is counted whether or not the ring moved).
func TestKickCounts(t *testing.T) {
	g := newGuestN(t, 0, 2)
	g.bringUp(allFeatures)
	ctrl := 2 * g.pairs
	cmd := g.alloc(4)
	copy(g.ram[cmd:], []byte{ctrlMQ, ctrlMQPairsSet, 2, 0})
	ack := g.alloc(1)
	g.post(ctrl, [3]uint64{cmd, 4, 0}, [3]uint64{ack, 1, 1})
	g.waitUsed(ctrl, 1)
	require.Equal(t, 2, g.dev.ActivePairs())

	// Pair 0: three frames sent, one kick each, and one kick with nothing new; two
	// receive buffers posted, one kick each, one received into.
	f := ethFrame([6]byte{2, 0, 0, 0, 0, 9}, "kick")
	for range 3 {
		a := g.alloc(12 + len(f))
		copy(g.ram[a+12:], f)
		g.post(1, [3]uint64{a, uint64(12 + len(f)), 0})
		assert.Equal(t, f, g.hostRecv()[12:])
	}
	g.kick(1)
	for range 2 {
		g.post(0, [3]uint64{g.alloc(2048), 2048, 1})
	}
	in := ethFrame(g.dev.MAC(), "in")
	_, err := unix.Write(g.host, append(make([]byte, 12), in...))
	require.NoError(t, err)
	g.waitUsed(0, 1)
	// Pair 1: one receive kick only.
	g.post(2, [3]uint64{g.alloc(2048), 2048, 1})

	want := []struct{ tx, rx uint64 }{{4, 2}, {0, 1}}
	// A kick is counted when the worker reads its eventfd, which may come after
	// the work it announced was already done (the worker found it polling).
	ok := assert.Eventually(t, func() bool {
		st := g.dev.Stats()
		for i, w := range want {
			if st[i].TxKicks != w.tx || st[i].RxKicks != w.rx {
				return false
			}
		}
		return true
	}, 5*time.Second, time.Millisecond)
	st := g.dev.Stats()
	require.True(t, ok, "kicks per pair: want %v, have %+v", want, st)
	assert.Equal(t, uint64(3), st[0].TxPackets)
	assert.Equal(t, uint64(1), st[0].RxPackets)
}
