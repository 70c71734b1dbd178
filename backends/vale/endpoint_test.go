package vale

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

func readable(t *testing.T, fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	_, err := unix.Poll(pfd, 0)
	require.NoError(t, err)
	return pfd[0].Revents&unix.POLLIN != 0
}

func TestEndpoint(t *testing.T) {
	r := NewRegistry()
	x, err := r.OpenEndpoint("vale0:x", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	y, err := r.OpenEndpoint("vale0:y", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer y.Close()
	assert.Equal(t, "vale0:x", x.Name())

	assert.False(t, readable(t, y.ReadyFD()))
	frames := [][]byte{eth(bcastMAC, mac(1), 60, 1), eth(mac(2), mac(1), 3000, 2)}
	n, err := x.Send(frames)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	assert.True(t, readable(t, y.ReadyFD()), "delivery did not wake the receiver")
	bufs := [][]byte{make([]byte, 4096), make([]byte, 4096), make([]byte, 4096)}
	lens := make([]int, 3)
	n, err = y.Recv(bufs, lens)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	assert.Equal(t, frames[0], bufs[0][:lens[0]])
	assert.Equal(t, frames[1], bufs[1][:lens[1]], "a frame longer than a buffer crosses as a chain")
	assert.Equal(t, uint64(2), y.SwitchPort().Counters().RxFrames)

	require.NoError(t, x.Close())
	assert.Nil(t, r.Get("vale0").PortByName("x"))
	n, err = y.Send(frames[:1]) // nobody else on the switch: flooded to no one
	require.NoError(t, err)
	assert.Equal(t, 1, n)
}

// TestEndpointNoFlowControl: a switch endpoint has no RoomFD, and its Send takes
// every frame even when the receiver's ring is full: the switch drops them there
// and counts them, so a sender never waits.
func TestEndpointNoFlowControl(t *testing.T) {
	r := NewRegistry()
	x, err := r.OpenEndpoint("vale0:x", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer x.Close()
	y, err := r.OpenEndpoint("vale0:y", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer y.Close()
	assert.Equal(t, -1, x.RoomFD())
	frames := make([][]byte, 40)
	for i := range frames {
		frames[i] = eth(bcastMAC, mac(1), 60, uint32(i))
	}
	sent := 0
	for range 3 { // 120 frames for 63 free slots, y never reads
		n, err := x.Send(frames)
		require.NoError(t, err)
		sent += n
	}
	assert.Equal(t, 120, sent)
	c := y.SwitchPort().Counters()
	assert.Equal(t, uint64(63), c.RxFrames)
	assert.Equal(t, uint64(120-63), c.DropNoSpace)
}
