//go:build linux

package ptnet

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

func testCSB(t *testing.T, n int) *netmap.CSB {
	mem := make([]byte, 2*n*netmap.CSBEntrySize)
	c, err := netmap.NewCSB(mem[:n*netmap.CSBEntrySize], mem[n*netmap.CSBEntrySize:], n)
	require.NoError(t, err)
	return c
}

func TestFlushRings(t *testing.T) {
	c := testCSB(t, 3)
	for i := range 3 {
		c.SetHwCurTail(i, 5, 4)
		c.SetHeadCur(i, 5, 5)
	}
	c.SetHeadCur(2, 9, 9) // RX ring 2 released slots the host has not seen
	var kicked []int
	// The host takes the release when kicked.
	host := func(i int) error {
		kicked = append(kicked, i)
		c.SetHwCurTail(i, c.Head(i), c.HwTail(i))
		return nil
	}
	assert.Zero(t, flushRings(c, 3, host, time.Second))
	assert.Equal(t, []int{2}, kicked, "only the ring that was behind")

	// A host that never answers costs at most the limit.
	c.SetHeadCur(0, 7, 7)
	start := time.Now()
	assert.Equal(t, 1, flushRings(c, 3, func(int) error { return nil }, 20*time.Millisecond))
	assert.Less(t, time.Since(start), time.Second)
	assert.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond)
}
