package vale

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refHash is SPECS 2's formula written on the bytes, as netmap's nm_bridge_rthash
// states it, to check the packed fast path against.
func refHash(m []byte) uint32 {
	a, b, c := uint32(0x9e3779b9), uint32(0x9e3779b9), uint32(0)
	b += uint32(m[5]) << 8
	b += uint32(m[4])
	a += uint32(m[3]) << 24
	a += uint32(m[2]) << 16
	a += uint32(m[1]) << 8
	a += uint32(m[0])
	// The mix, round by round (a, b, c rotate roles).
	a -= b + c
	a ^= c >> 13
	b -= c + a
	b ^= a << 8
	c -= a + b
	c ^= b >> 13
	a -= b + c
	a ^= c >> 12
	b -= c + a
	b ^= a << 16
	c -= a + b
	c ^= b >> 5
	a -= b + c
	a ^= c >> 3
	b -= c + a
	b ^= a << 10
	c -= a + b
	c ^= b >> 15
	return c & (HashSize - 1)
}

func TestHashMatchesSpecFormula(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 10000; i++ {
		m := make([]byte, 6)
		for j := range m {
			m[j] = byte(rng.Uint32())
		}
		require.Equal(t, refHash(m), rthash(m), "mac % x", m)
	}
}

func TestLearningTable(t *testing.T) {
	l := NewLearning()
	f := eth(mac(0xb), mac(0xa), 60, 0)
	assert.Equal(t, Broadcast, l.Lookup(f, 3), "unknown destination floods")
	p, ok := l.Where(mac(0xa))
	require.True(t, ok, "source not learned")
	assert.Equal(t, 3, p)
	assert.Equal(t, 3, l.Lookup(eth(mac(0xa), mac(0xb), 60, 0), 5))
	p, _ = l.Where(mac(0xb))
	assert.Equal(t, 5, p)

	// Group source addresses are never learned; group destinations flood.
	l.Lookup(eth(mac(0xa), []byte{0x03, 0, 0, 0, 0, 7}, 60, 0), 1)
	_, ok = l.Where([]byte{0x03, 0, 0, 0, 0, 7})
	assert.False(t, ok)
	assert.Equal(t, Broadcast, l.Lookup(eth([]byte{0x01, 0, 0x5e, 0, 0, 1}, mac(0xb), 60, 0), 5))
	assert.Equal(t, Drop, l.Lookup(make([]byte, 13), 0))

	// The destination cache must not hide a move: b goes to port 7.
	assert.Equal(t, 5, l.Lookup(eth(mac(0xb), mac(0xa), 60, 0), 3))
	l.Lookup(eth(mac(0xa), mac(0xb), 60, 0), 7)
	assert.Equal(t, 7, l.Lookup(eth(mac(0xb), mac(0xa), 60, 0), 3))

	l.Forget(7)
	assert.Equal(t, Broadcast, l.Lookup(eth(mac(0xb), mac(0xa), 60, 0), 3))
	// The source cache of a forgotten port is cleared too, so it relearns.
	l.Lookup(eth(mac(0xa), mac(0xb), 60, 0), 7)
	p, ok = l.Where(mac(0xb))
	require.True(t, ok)
	assert.Equal(t, 7, p)
}

// A colliding MAC overwrites the bucket; the old MAC then floods instead of going to
// the wrong port.
func TestLearningCollision(t *testing.T) {
	l := NewLearning()
	base := mac(1)
	var other []byte
	for i := 2; i < 1<<16; i++ {
		m := []byte{0x02, 0, 0, 0, byte(i >> 8), byte(i)}
		if rthash(m) == rthash(base) {
			other = m
			break
		}
	}
	require.NotNil(t, other, "no collision found")
	l.Learn(base, 1)
	l.Learn(other, 2)
	_, ok := l.Where(base)
	assert.False(t, ok)
	assert.Equal(t, Broadcast, l.Lookup(eth(base, mac(9), 60, 0), 4))
	assert.Equal(t, 2, l.Lookup(eth(other, mac(9), 60, 0), 4))
}
