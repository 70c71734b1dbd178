package virtio

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/vmm/memory"
)

func TestPopPushRoundTrip(t *testing.T) {
	d := newDriver(t, 8, false, true)
	out := d.buf(10, false)
	copy(d.ram[out.addr:], "hello ring")
	in := d.buf(64, true)
	d.avail(d.chain(out, in))
	d.avail(d.indirectChain(d.buf(3, false), d.buf(5, false), d.buf(7, true)))

	var c Chain
	ok, err := d.q.Pop(&c)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, uint16(0), c.Head)
	require.Len(t, c.Readable(), 1)
	assert.Equal(t, "hello ring", string(c.Readable()[0].Data))
	require.Len(t, c.Writable(), 1)
	assert.Equal(t, uint64(64), c.WriteLen)
	copy(c.Writable()[0].Data, "reply")
	assert.Equal(t, "reply", string(d.ram[in.addr:in.addr+5]), "buffers alias guest memory")
	d.q.Push(c.Head, 5)

	ok, err = d.q.Pop(&c)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, 2, c.NRead)
	assert.Equal(t, uint64(8), c.ReadLen)
	assert.Equal(t, uint64(7), c.WriteLen)
	d.q.Push(c.Head, 7)

	ok, err = d.q.Pop(&c)
	require.NoError(t, err)
	assert.False(t, ok, "ring is empty")
	assert.Equal(t, uint16(0), d.usedIdx(), "nothing published before Flush")
	require.True(t, d.q.Flush())
	ids, lens := d.used()
	assert.Equal(t, []uint32{0, 2}, ids)
	assert.Equal(t, []uint32{5, 7}, lens)
	assert.Equal(t, QueueStats{Popped: 2, Pushed: 2}, d.q.Stats())
}

// attack sets up one malicious chain with setup and checks it is dropped (returned
// with zero length and counted), the queue stays usable, and a good chain after it works.
func attack(t *testing.T, size uint16, indirect bool, setup func(d *driver) uint16) {
	t.Helper()
	d := newDriver(t, size, false, indirect)
	head := setup(d)
	d.avail(head)
	good := d.buf(4, false)
	d.nextDesc = size - 1
	d.putDesc(descGPA, size-1, good.addr, good.len, 0, 0)
	d.avail(size - 1)
	var c Chain
	ok, err := d.q.Pop(&c)
	require.NoError(t, err)
	require.True(t, ok, "the good chain after the bad one is served")
	assert.Equal(t, size-1, c.Head)
	d.q.Push(c.Head, 0)
	d.q.Flush()
	ids, lens := d.used()
	assert.Equal(t, []uint32{uint32(head), uint32(size - 1)}, ids)
	assert.Equal(t, []uint32{0, 0}, lens)
	assert.Equal(t, uint64(1), d.q.Stats().Dropped)
	assert.NotEmpty(t, d.q.LastDrop())
	assert.NoError(t, d.q.Broken())
}

func TestAttackChains(t *testing.T) {
	cases := []struct {
		name     string
		indirect bool
		setup    func(d *driver) uint16
	}{
		{"self loop", false, func(d *driver) uint16 {
			b := d.buf(8, false)
			d.putDesc(descGPA, 0, b.addr, b.len, DescFNext, 0)
			return 0
		}},
		{"two-descriptor loop", false, func(d *driver) uint16 {
			b := d.buf(8, false)
			d.putDesc(descGPA, 0, b.addr, b.len, DescFNext, 1)
			d.putDesc(descGPA, 1, b.addr, b.len, DescFNext, 0)
			return 0
		}},
		{"chain longer than the queue", false, func(d *driver) uint16 {
			b := d.buf(8, false)
			// Every descriptor but the last (kept for the good chain), cyclically.
			for i := uint16(0); i < d.size-1; i++ {
				d.putDesc(descGPA, i, b.addr, b.len, DescFNext, (i+1)%(d.size-1))
			}
			return 0
		}},
		{"next outside the table", false, func(d *driver) uint16 {
			b := d.buf(8, false)
			d.putDesc(descGPA, 0, b.addr, b.len, DescFNext, 0xffff)
			return 0
		}},
		{"buffer outside guest RAM", false, func(d *driver) uint16 {
			d.putDesc(descGPA, 0, ramSize-8, 16, 0, 0)
			return 0
		}},
		{"buffer address wraps", false, func(d *driver) uint16 {
			d.putDesc(descGPA, 0, math.MaxUint64-7, 0x20, 0, 0)
			return 0
		}},
		{"lengths that overflow", false, func(d *driver) uint16 {
			d.putDesc(descGPA, 0, bufBase, math.MaxUint32, DescFNext, 1)
			d.putDesc(descGPA, 1, bufBase, math.MaxUint32, 0, 0)
			return 0
		}},
		{"readable after writable", false, func(d *driver) uint16 {
			d.putDesc(descGPA, 0, bufBase, 8, DescFWrite|DescFNext, 1)
			d.putDesc(descGPA, 1, bufBase, 8, 0, 0)
			return 0
		}},
		{"indirect table inside indirect table", true, func(d *driver) uint16 {
			d.putDesc(indirBase+0x100, 0, bufBase, 8, 0, 0)
			d.putDesc(indirBase, 0, indirBase+0x100, 16, DescFIndirect, 0)
			d.putDesc(descGPA, 0, indirBase, 16, DescFIndirect, 0)
			return 0
		}},
		{"indirect not negotiated", false, func(d *driver) uint16 {
			d.putDesc(indirBase, 0, bufBase, 8, 0, 0)
			d.putDesc(descGPA, 0, indirBase, 16, DescFIndirect, 0)
			return 0
		}},
		{"indirect with next", true, func(d *driver) uint16 {
			d.putDesc(indirBase, 0, bufBase, 8, 0, 0)
			d.putDesc(descGPA, 0, indirBase, 16, DescFIndirect|DescFNext, 1)
			d.putDesc(descGPA, 1, bufBase, 8, 0, 0)
			return 0
		}},
		{"indirect table of odd length", true, func(d *driver) uint16 {
			d.putDesc(descGPA, 0, indirBase, 24, DescFIndirect, 0)
			return 0
		}},
		{"indirect table outside RAM", true, func(d *driver) uint16 {
			d.putDesc(descGPA, 0, ramSize-16, 32, DescFIndirect, 0)
			return 0
		}},
		{"indirect loop", true, func(d *driver) uint16 {
			d.putDesc(indirBase, 0, bufBase, 8, DescFNext, 1)
			d.putDesc(indirBase, 1, bufBase, 8, DescFNext, 0)
			d.putDesc(descGPA, 0, indirBase, 32, DescFIndirect, 0)
			return 0
		}},
		{"indirect next past its table", true, func(d *driver) uint16 {
			d.putDesc(indirBase, 0, bufBase, 8, DescFNext, 2)
			d.putDesc(descGPA, 0, indirBase, 32, DescFIndirect, 0)
			return 0
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { attack(t, 8, c.indirect, c.setup) })
	}
}

func TestAttackRingBreaksQueue(t *testing.T) {
	t.Run("avail index jump", func(t *testing.T) {
		d := newDriver(t, 8, false, false)
		d.avail(d.chain(d.buf(8, false)))
		d.setAvailIdx(d.availIdx + 8) // 9 pending in an 8-entry queue
		var c Chain
		ok, err := d.q.Pop(&c)
		assert.False(t, ok)
		require.ErrorIs(t, err, ErrBroken)
		_, err = d.q.Pop(&c)
		require.ErrorIs(t, err, ErrBroken, "a broken queue stays broken")
		assert.True(t, d.q.EnableNotify(), "a broken queue reports work so the worker looks at it")
	})
	t.Run("head outside the table", func(t *testing.T) {
		d := newDriver(t, 8, false, false)
		d.avail(8)
		var c Chain
		_, err := d.q.Pop(&c)
		require.ErrorIs(t, err, ErrBroken)
	})
	t.Run("bad ring placement", func(t *testing.T) {
		ram := make([]byte, 0x10000)
		mem, err := memory.FromBytes([]memory.Region{{Range: memory.Range{GPA: 0, Size: 0x10000}, Host: ram, FD: -1}})
		require.NoError(t, err)
		bad := []QueueConfig{
			{Size: 0, Desc: 0, Avail: 0x1000, Used: 0x2000},
			{Size: 12, Desc: 0, Avail: 0x1000, Used: 0x2000},
			{Size: 65535, Desc: 0, Avail: 0x1000, Used: 0x2000},
			{Size: 8, Desc: 8, Avail: 0x1000, Used: 0x2000},
			{Size: 8, Desc: 0, Avail: 0x1001, Used: 0x2000},
			{Size: 8, Desc: 0, Avail: 0x1000, Used: 0x2002},
			{Size: 8, Desc: 0xfff0, Avail: 0x1000, Used: 0x2000},
			{Size: 8, Desc: 0, Avail: 0xfff0, Used: 0x2000},
			{Size: 8, Desc: 0, Avail: 0x1000, Used: 0xffe0},
			{Size: 8, Desc: 0, Avail: 0x1000, Used: math.MaxUint64 - 3},
		}
		for i, cfg := range bad {
			_, err := NewQueue(mem, cfg)
			assert.ErrorIs(t, err, ErrBroken, "config %d", i)
		}
	})
}

func TestEventIdxInterrupts(t *testing.T) {
	d := newDriver(t, 8, true, false)
	var c Chain
	for i := 0; i < 4; i++ {
		d.avail(d.chain(d.buf(8, true)))
	}
	// Driver wants an interrupt when used idx passes 2 (used_event = 2).
	d.setUsedEvent(2)
	pop := func() {
		ok, err := d.q.Pop(&c)
		require.NoError(t, err)
		require.True(t, ok)
		d.q.Push(c.Head, 8)
	}
	pop()
	pop()
	assert.False(t, d.q.NeedInterrupt(), "used idx 0->2 does not cross used_event 2")
	pop()
	assert.True(t, d.q.NeedInterrupt(), "used idx 2->3 crosses used_event 2")
	pop()
	assert.False(t, d.q.NeedInterrupt(), "already signalled for entry 2")
	assert.False(t, d.q.NeedInterrupt(), "nothing new")
	st := d.q.Stats()
	assert.Equal(t, uint64(1), st.Interrupts)
	assert.Equal(t, uint64(2), st.Suppressed)
}

func TestEventIdxKicks(t *testing.T) {
	d := newDriver(t, 8, true, false)
	var c Chain
	assert.False(t, d.q.EnableNotify())
	assert.Equal(t, uint16(0), d.availEvent())
	old := d.availIdx
	d.avail(d.chain(d.buf(8, false)))
	assert.True(t, d.wantKick(old, d.availIdx), "first chain after arming kicks")
	ok, _ := d.q.Pop(&c)
	require.True(t, ok)
	d.q.DisableNotify()
	// While the worker polls, avail_event stays behind: the driver does not kick.
	old = d.availIdx
	d.avail(d.chain(d.buf(8, false)))
	assert.False(t, d.wantKick(old, d.availIdx))
	// Arming with work pending reports it (no sleep with chains waiting).
	assert.True(t, d.q.EnableNotify())
	assert.Equal(t, uint16(1), d.availEvent())
}

func TestFlagSuppression(t *testing.T) {
	d := newDriver(t, 8, false, false)
	var c Chain
	d.q.DisableNotify()
	assert.Equal(t, uint16(UsedFNoNotify), d.usedFlags())
	assert.False(t, d.q.EnableNotify())
	assert.Zero(t, d.usedFlags())
	d.avail(d.chain(d.buf(8, true)))
	d.setAvailFlags(AvailFNoInterrupt)
	ok, _ := d.q.Pop(&c)
	require.True(t, ok)
	d.q.Push(c.Head, 1)
	assert.False(t, d.q.NeedInterrupt())
	d.setAvailFlags(0)
	d.avail(d.chain(d.buf(8, true)))
	ok, _ = d.q.Pop(&c)
	require.True(t, ok)
	d.q.Push(c.Head, 1)
	assert.True(t, d.q.NeedInterrupt())
}

func TestUnpop(t *testing.T) {
	d := newDriver(t, 8, false, false)
	for i := 0; i < 3; i++ {
		d.avail(d.chain(d.buf(8, true)))
	}
	var a, b Chain
	ok, _ := d.q.Pop(&a)
	require.True(t, ok)
	ok, _ = d.q.Pop(&b)
	require.True(t, ok)
	assert.False(t, d.q.Unpop(&a), "only the chain popped last can be given back")
	require.True(t, d.q.Unpop(&b))
	n, err := d.q.Pending()
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	head := b.Head
	ok, _ = d.q.Pop(&b)
	require.True(t, ok)
	assert.Equal(t, head, b.Head)
	assert.Equal(t, uint64(3), d.q.Stats().Popped, "a chain given back counts again")
}

func TestNeedEvent(t *testing.T) {
	// Wrap-around: old 0xfffe, new 1 crosses events 0xfffe, 0xffff and 0.
	for _, ev := range []uint16{0xfffe, 0xffff, 0} {
		assert.True(t, needEvent(ev, 1, 0xfffe), "event %#x", ev)
	}
	assert.False(t, needEvent(1, 1, 0xfffe))
	assert.False(t, needEvent(0xfffd, 1, 0xfffe))
}

// FuzzChain lets the fuzzer write the descriptor table, an indirect area and the avail
// ring: Pop must never panic, never return a buffer outside RAM, and never hand out
// more chains (good or dropped) than the driver made available.
func FuzzChain(f *testing.F) {
	seed := make([]byte, 16*8)
	binary.LittleEndian.PutUint64(seed, bufBase)
	binary.LittleEndian.PutUint32(seed[8:], 64)
	f.Add(seed, []byte{0, 0, 1, 0}, uint16(2), true)
	loop := make([]byte, 32)
	binary.LittleEndian.PutUint16(loop[12:], DescFNext)
	binary.LittleEndian.PutUint16(loop[14:], 0)
	f.Add(loop, []byte{0, 0}, uint16(1), false)
	ind := make([]byte, 16)
	binary.LittleEndian.PutUint64(ind, indirBase)
	binary.LittleEndian.PutUint32(ind[8:], 32)
	binary.LittleEndian.PutUint16(ind[12:], DescFIndirect)
	f.Add(ind, []byte{0, 0}, uint16(1), true)
	f.Fuzz(func(t *testing.T, descs, ring []byte, availIdx uint16, indirect bool) {
		d := newDriver(t, 8, true, indirect)
		copy(d.ram[descGPA:descGPA+16*8], descs)
		if len(descs) > 16*8 {
			copy(d.ram[indirBase:indirBase+0x1000], descs[16*8:])
		}
		copy(d.ram[availGPA+4:availGPA+4+16], ring)
		d.setAvailIdx(availIdx)
		var c Chain
		popped := 0
		for i := 0; i < 100; i++ {
			ok, err := d.q.Pop(&c)
			if err != nil {
				require.ErrorIs(t, err, ErrBroken)
				break
			}
			if !ok {
				break
			}
			popped++
			require.LessOrEqual(t, len(c.Bufs), MaxQueueSize)
			for _, b := range c.Bufs {
				require.True(t, d.mem.Contains(b.GPA, uint64(len(b.Data))))
			}
			d.q.Push(c.Head, uint32(c.WriteLen))
		}
		st := d.q.Stats()
		require.LessOrEqual(t, st.Pushed, uint64(8), "at most a queue's worth of chains")
		require.Equal(t, st.Pushed, uint64(popped)+st.Dropped)
	})
}

func benchPopPush(b *testing.B, nbufs int, indirect bool) {
	d := newDriver(b, 256, true, indirect)
	bufs := make([]dbuf, nbufs)
	for i := range bufs {
		bufs[i] = d.buf(1500, i == nbufs-1)
	}
	var c Chain
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var head uint16
		if indirect {
			d.nextIndir = indirBase
			head = d.indirectChain(bufs...)
		} else {
			head = d.chain(bufs...)
		}
		d.avail(head)
		ok, err := d.q.Pop(&c)
		if !ok || err != nil {
			b.Fatalf("pop: %v %v", ok, err)
		}
		d.q.Push(c.Head, 1500)
		if i%32 == 31 {
			d.q.NeedInterrupt()
		}
	}
}

func BenchmarkPopPush1(b *testing.B)         { benchPopPush(b, 1, false) }
func BenchmarkPopPush2(b *testing.B)         { benchPopPush(b, 2, false) }
func BenchmarkPopPushIndirect4(b *testing.B) { benchPopPush(b, 4, true) }

// TestDrain: the one service loop. It stops at its budget (more), gives a refused
// chain back first in line, and returns more = false only with the ring empty and
// notifications re-armed, so the driver's next chain kicks.
func TestDrain(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		d := newDriver(t, 8, eventIdx, false)
		for i := 0; i < 5; i++ {
			d.avail(d.chain(d.buf(8, true)))
		}
		d.q.DisableNotify()
		var c Chain
		var heads []uint16
		take := func(c *Chain) Verdict {
			heads = append(heads, c.Head)
			d.q.Push(c.Head, 0)
			return Next
		}
		assert.True(t, d.q.Drain(&c, 2, take), "budget used up")
		assert.Equal(t, []uint16{0, 1}, heads)
		refused := 0
		assert.True(t, d.q.Drain(&c, 8, func(c *Chain) Verdict {
			refused++
			return Refuse
		}), "a refusal means come back")
		assert.Equal(t, 1, refused)
		assert.True(t, d.q.Drain(&c, 8, func(c *Chain) Verdict { take(c); return Stop }))
		assert.Equal(t, []uint16{0, 1, 2}, heads, "the refused chain came first again")
		assert.False(t, d.q.Drain(&c, 8, take), "empty and armed")
		assert.Equal(t, []uint16{0, 1, 2, 3, 4}, heads)
		if eventIdx {
			assert.Equal(t, uint16(5), d.availEvent())
		} else {
			assert.Zero(t, d.usedFlags()&UsedFNoNotify)
		}
		old := d.availIdx
		d.avail(d.chain(d.buf(8, true)))
		if eventIdx {
			assert.True(t, d.wantKick(old, d.availIdx), "the next chain kicks")
		}
		d.q.Flush()
		ids, _ := d.used()
		assert.Len(t, ids, 5)
	}
	t.Run("broken", func(t *testing.T) {
		d := newDriver(t, 8, true, false)
		d.setAvailIdx(9)
		var c Chain
		assert.False(t, d.q.Drain(&c, 8, func(*Chain) Verdict { return Next }))
		assert.ErrorIs(t, d.q.Broken(), ErrBroken)
	})
}
