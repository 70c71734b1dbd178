package pktgen

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// fuzzRing lays out an RX netmap_ring of num slots with bufs buffers of
// bufSize bytes after it, slots and indices taken from data (as a hostile
// peer could write them).
func fuzzRing(t *testing.T, num, bufs, bufSize uint32, head, tail uint32, slots []byte) *netmap.Ring {
	ringLen := uint64(netmap.RingSlotsOff) + uint64(num)*netmap.SlotSize
	bufStart := (ringLen + 63) &^ 63
	mem := make([]byte, bufStart+uint64(bufs)*uint64(bufSize))
	le := binary.LittleEndian
	le.PutUint64(mem[netmap.RingBufOfsOff:], bufStart)
	le.PutUint32(mem[netmap.RingNumSlotsOff:], num)
	le.PutUint32(mem[netmap.RingBufSizeOff:], bufSize)
	le.PutUint16(mem[netmap.RingDirOff:], 1)
	le.PutUint32(mem[netmap.RingHeadOff:], head)
	le.PutUint32(mem[netmap.RingCurOff:], head)
	le.PutUint32(mem[netmap.RingTailOff:], tail)
	copy(mem[netmap.RingSlotsOff:ringLen], slots)
	for i := range bufs { // each buffer a pktgen frame, so some parse
		b := mem[bufStart+uint64(i)*uint64(bufSize):]
		copy(b, Template(MinFrameSize, 0, Broadcast, DefaultSrc, KindData))
		Stamp(b, uint64(i), 0)
	}
	r, err := netmap.NewRing(mem, 0)
	require.NoError(t, err)
	return r
}

func FuzzConsume(f *testing.F) {
	ok := make([]byte, 8*netmap.SlotSize)
	for i := range 8 {
		binary.LittleEndian.PutUint32(ok[i*netmap.SlotSize:], uint32(i))
		binary.LittleEndian.PutUint16(ok[i*netmap.SlotSize+4:], 60)
	}
	f.Add(uint32(0), uint32(7), uint32(256), uint8(12), ok)
	f.Add(uint32(3), uint32(2), uint32(1), uint8(0), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x20, 0})
	f.Fuzz(func(t *testing.T, head, tail, limit uint32, hdr uint8, slots []byte) {
		const num, bufs, bufSize = 8, 8, 128
		r := fuzzRing(t, num, bufs, bufSize, head%num, tail%num, slots)
		hdrLen := 0
		if hdr%2 == 1 {
			hdrLen = 12
		}
		g := &gen{c: Config{HdrLen: hdrLen, Mode: ModeRx}, start: time.Now()}
		avail := r.Space()
		var frames, bytes uint64
		err := g.consume(r, limit, func(fr frame) error {
			frames++
			bytes += fr.bytes
			if !fr.bad {
				require.LessOrEqual(t, len(fr.eth), bufSize)
				_, _ = Parse(fr.eth)
			}
			return nil
		})
		require.NoError(t, err)
		used := (r.Head() + num - head%num) % num
		require.LessOrEqual(t, used, avail, "consumed past tail")
		require.LessOrEqual(t, frames, uint64(used))
		require.LessOrEqual(t, bytes, uint64(used)*65535)
		require.Equal(t, r.Head(), r.Cur())
	})
}
