package seqpacket

import (
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
)

var _ backends.Port = (*Port)(nil)

func TestFramesKeepBoundaries(t *testing.T) {
	p, peer, err := Pair("t")
	require.NoError(t, err)
	defer p.Close()
	defer unix.Close(peer)

	n, err := p.Send([][]byte{[]byte("first frame"), []byte("2nd")})
	require.NoError(t, err)
	require.Equal(t, 2, n)
	buf := make([]byte, 64)
	m, err := unix.Read(peer, buf)
	require.NoError(t, err)
	require.Equal(t, "first frame", string(buf[:m]))

	_, err = unix.Write(peer, []byte("abc"))
	require.NoError(t, err)
	_, err = unix.Write(peer, []byte("defgh"))
	require.NoError(t, err)
	bufs := [][]byte{make([]byte, 8), make([]byte, 8), make([]byte, 8)}
	lens := make([]int, 3)
	got, err := p.Recv(bufs, lens)
	require.NoError(t, err)
	require.Equal(t, 2, got, "two frames pending, Recv must not block for a third")
	require.Equal(t, "abc", string(bufs[0][:lens[0]]))
	require.Equal(t, "defgh", string(bufs[1][:lens[1]]))
}

func TestVectoredIO(t *testing.T) {
	p, peer, err := Pair("t")
	require.NoError(t, err)
	defer p.Close()
	defer unix.Close(peer)

	n, err := p.Writev([][]byte{[]byte("hdr:"), []byte("payload")})
	require.NoError(t, err)
	require.Equal(t, 11, n)
	buf := make([]byte, 64)
	m, err := unix.Read(peer, buf)
	require.NoError(t, err)
	require.Equal(t, "hdr:payload", string(buf[:m]), "one gathered write is one frame")

	n, err = p.Readv([][]byte{make([]byte, 4)})
	require.NoError(t, err)
	require.Zero(t, n, "nothing pending")
	_, err = unix.Write(peer, []byte("0123456789"))
	require.NoError(t, err)
	a, b := make([]byte, 4), make([]byte, 16)
	n, err = p.Readv([][]byte{a, b})
	require.NoError(t, err)
	require.Equal(t, 10, n)
	require.Equal(t, "0123", string(a))
	require.Equal(t, "456789", string(b[:6]))
}

func TestFullSocketDropsInsteadOfBlocking(t *testing.T) {
	p, peer, err := Pair("t")
	require.NoError(t, err)
	defer p.Close()
	defer unix.Close(peer)
	frame := make([]byte, 1500)
	sent := 0
	for i := 0; i < 100000; i++ {
		n, err := p.Send([][]byte{frame})
		require.NoError(t, err)
		if n == 0 {
			break
		}
		sent++
	}
	require.Less(t, sent, 100000, "a socket nobody reads must fill up")
	n, err := p.Writev([][]byte{frame})
	require.NoError(t, err)
	require.Zero(t, n)
}
