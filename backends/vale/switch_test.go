package vale

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

func TestHashSpreadsMACs(t *testing.T) {
	used := map[uint32]bool{}
	for i := 0; i < HashSize; i++ {
		m := []byte{0x02, 0x11, 0x22, byte(i >> 16), byte(i >> 8), byte(i)}
		h := rthash(m)
		require.Less(t, h, uint32(HashSize))
		used[h] = true
	}
	// A uniform hash fills about 63% of the buckets with as many keys as buckets.
	assert.Greater(t, len(used), HashSize/2, "hash clusters sequential MACs")
	assert.NotEqual(t, rthash(mac(1)), rthash(mac(2)))
}

func TestLearningFloodingUnicast(t *testing.T) {
	_, ps, us := newPorts(t, 3, 64)
	a, b, c := us[0], us[1], us[2]

	// Unknown destination: flooded to everyone but the sender.
	a.send(eth(mac(0xb), mac(0xa), 60, 1))
	assert.Equal(t, []uint32{1}, tags(b.recv()))
	assert.Equal(t, []uint32{1}, tags(c.recv()))
	assert.Empty(t, a.recv(), "flood came back to its source")

	// b answers a: a was learned on port 0, so only a gets it.
	b.send(eth(mac(0xa), mac(0xb), 60, 2))
	assert.Equal(t, []uint32{2}, tags(a.recv()))
	assert.Empty(t, c.recv(), "learned unicast was flooded")

	// Now both are learned: a -> b goes to b only.
	a.send(eth(mac(0xb), mac(0xa), 100, 3))
	got := b.recv()
	require.Len(t, got, 1)
	assert.Equal(t, eth(mac(0xb), mac(0xa), 100, 3), got[0], "payload changed on the way")
	assert.Empty(t, c.recv())

	// Broadcast and multicast flood.
	c.send(eth(bcastMAC, mac(0xc), 60, 4), eth([]byte{0x01, 0, 0x5e, 0, 0, 1}, mac(0xc), 60, 5))
	assert.Equal(t, []uint32{4, 5}, tags(a.recv()))
	assert.Equal(t, []uint32{4, 5}, tags(b.recv()))
	assert.Empty(t, c.recv())

	// A MAC that moves is relearned on its new port.
	c.send(eth(mac(0xc), mac(0xa), 60, 6)) // "a" now behind c; dst c is c itself: dropped
	where, ok := ps[0].Switch().Learning().Where(mac(0xa))
	require.True(t, ok)
	assert.Equal(t, ps[2].Index(), where)
	b.send(eth(mac(0xa), mac(0xb), 60, 7))
	assert.Equal(t, []uint32{7}, tags(c.recv()))
	assert.Empty(t, a.recv())

	ca, cb, cc := ps[0].Counters(), ps[1].Counters(), ps[2].Counters()
	assert.Equal(t, uint64(2), ca.TxFrames)
	assert.Equal(t, uint64(3), ca.RxFrames)
	assert.Equal(t, uint64(2), cb.TxFrames)
	assert.Equal(t, uint64(4), cb.RxFrames)
	assert.Equal(t, uint64(3), cc.TxFrames)
	assert.Equal(t, uint64(1), cc.DropSelf)
	assert.Equal(t, uint64(60+60), cb.TxBytes)
}

func TestShortSelfAndChains(t *testing.T) {
	_, ps, us := newPorts(t, 2, 256)
	a, b := us[0], us[1]
	a.send(eth(mac(0xb), mac(0xa), 60, 0)) // learn a
	b.recv()

	a.send(eth(mac(0xb), mac(0xa), 13, 0), eth(mac(0xa), mac(0xa), 60, 1))
	assert.Empty(t, b.recv())
	assert.Empty(t, a.recv())
	assert.Equal(t, uint64(1), ps[0].Counters().DropShort)
	assert.Equal(t, uint64(1), ps[0].Counters().DropSelf)

	// A chain of MaxFrags slots is delivered whole with the fragment count in every
	// slot and MOREFRAG on all but the last.
	frame := eth(mac(0xb), mac(0xa), netmap.MaxFrags*20, 9)
	var frags [][]byte
	for i := 0; i < netmap.MaxFrags; i++ {
		frags = append(frags, frame[i*20:(i+1)*20])
	}
	a.queueChain(frags...)
	require.NoError(t, a.p.TxSync(0))
	slots := b.recvSlots()
	require.Len(t, slots, netmap.MaxFrags)
	var joined []byte
	for i, s := range slots {
		joined = append(joined, s.data...)
		assert.Equal(t, uint16(netmap.MaxFrags), s.flags>>8, "slot %d fragment count", i)
		assert.Equal(t, i < netmap.MaxFrags-1, s.flags&netmap.NSMoreFrag != 0, "slot %d MOREFRAG", i)
	}
	assert.Equal(t, frame, joined)

	// One fragment more: dropped and counted, and the frame after it still passes.
	long := eth(mac(0xb), mac(0xa), (netmap.MaxFrags+1)*20, 10)
	frags = nil
	for i := 0; i <= netmap.MaxFrags; i++ {
		frags = append(frags, long[i*20:(i+1)*20])
	}
	a.queueChain(frags...)
	a.send(eth(mac(0xb), mac(0xa), 60, 11))
	assert.Equal(t, []uint32{11}, tags(b.recv()))
	assert.Equal(t, uint64(1), ps[0].Counters().DropFrags)
}

func TestFullRingDropsNeverBlocks(t *testing.T) {
	const slots = 64
	_, ps, us := newPorts(t, 2, slots)
	a, b := us[0], us[1]
	b.send(eth(mac(0xa), mac(0xb), 60, 0)) // learn b
	a.recv()

	// b does not read: one slot always stays empty, so slots-1 fit.
	sent := 0
	for round := 0; round < 3; round++ {
		var fs [][]byte
		for i := 0; i < 40; i++ {
			fs = append(fs, eth(mac(0xb), mac(0xa), 60, uint32(sent)))
			sent++
		}
		a.send(fs...) // returns: the sender never waits
	}
	got := b.recv()
	require.Len(t, got, slots-1)
	assert.Equal(t, uint32(0), tags(got)[0])
	assert.Equal(t, uint32(slots-2), tags(got)[slots-2], "the first frames are kept, later ones dropped")
	assert.Equal(t, uint64(sent-(slots-1)), ps[1].Counters().DropNoSpace)

	// Room again after the reader released its slots.
	a.send(eth(mac(0xb), mac(0xa), 60, 1000))
	assert.Equal(t, []uint32{1000}, tags(b.recv()))
}

func TestLookupHook(t *testing.T) {
	s, ps, us := newPorts(t, 3, 64)
	a, b, c := us[0], us[1], us[2]
	b.send(eth(mac(0xa), mac(0xb), 60, 0))
	c.send(eth(mac(0xa), mac(0xc), 60, 0))
	a.recv()
	b.recv()
	c.recv()

	// A firewall: drop frames whose payload tag is odd, send everything from a to c
	// (redirect), else learn and forward as usual.
	var calls sync.Map
	s.SetLookup(func(frame []byte, src int) int {
		calls.Store(src, true)
		if frame[17]&1 == 1 {
			return Drop
		}
		if src == ps[0].Index() {
			return ps[2].Index()
		}
		return s.Learning().Lookup(frame, src)
	})
	a.send(eth(mac(0xb), mac(0xa), 60, 1), eth(mac(0xb), mac(0xa), 60, 2))
	assert.Equal(t, []uint32{2}, tags(c.recv()))
	assert.Empty(t, b.recv())
	b.send(eth(mac(0xc), mac(0xb), 60, 4))
	assert.Equal(t, []uint32{4}, tags(c.recv()))
	assert.Equal(t, uint64(1), ps[0].Counters().DropLookup)
	_, ok := calls.Load(ps[1].Index())
	assert.True(t, ok)

	// Results that name nothing are dropped and counted, never trusted.
	s.SetLookup(func([]byte, int) int { return 300 })
	a.send(eth(mac(0xb), mac(0xa), 60, 6))
	s.SetLookup(func([]byte, int) int { return 200 })
	a.send(eth(mac(0xb), mac(0xa), 60, 8))
	s.SetLookup(func([]byte, int) int { return -1 })
	a.send(eth(mac(0xb), mac(0xa), 60, 10))
	assert.Equal(t, uint64(3), ps[0].Counters().DropLookup)
	assert.Equal(t, uint64(1), ps[0].Counters().DropNoPort)

	s.SetLookup(nil)
	a.send(eth(mac(0xb), mac(0xa), 60, 12))
	assert.Equal(t, []uint32{12}, tags(b.recv()))
	assert.Empty(t, c.recv())
}

// TestCorruptRingsSwitchKeepsWorking: a port's user (a guest) writes garbage into its
// ring header and slots. Its rings are reinitialised; nobody else notices.
func TestCorruptRingsSwitchKeepsWorking(t *testing.T) {
	_, ps, us := newPorts(t, 2, 64)
	a, b := us[0], us[1]
	a.send(eth(mac(0xb), mac(0xa), 60, 1))
	b.recv()

	// TX head beyond the ring, cur before head.
	a.tx.SetHeadCur(5000, 7)
	err := a.p.TxSync(0)
	require.ErrorIs(t, err, netmap.ErrRingReinit)
	require.Less(t, a.tx.Head(), a.tx.NumSlots())
	assert.Equal(t, a.tx.Head(), a.tx.Cur())
	// cur behind head.
	h := a.tx.Head()
	a.tx.SetHeadCur(a.tx.Next(a.tx.Next(h)), a.tx.Next(h))
	require.ErrorIs(t, a.p.TxSync(0), netmap.ErrRingReinit)

	// RX side: head beyond tail.
	b.rx.SetHeadCur((b.rx.Tail()+3)%b.rx.NumSlots(), b.rx.Tail())
	require.ErrorIs(t, b.p.RxSync(0), netmap.ErrRingReinit)

	// A bad buffer index in a TX slot: that frame is dropped, the next one passes.
	s := a.tx.Slot(a.tx.Head())
	s.BufIdx = 1 << 30
	a.tx.SetSlot(a.tx.Head(), s)
	a.tx.SetHeadCur(a.tx.Next(a.tx.Head()), a.tx.Next(a.tx.Head()))
	require.NoError(t, a.p.TxSync(0))
	// Give the slot a good buffer back, as the kernel would not.
	a.send(eth(mac(0xb), mac(0xa), 60, 2))
	assert.Equal(t, []uint32{2}, tags(b.recv()))

	// A bad buffer index in an RX slot the user gave back: the switch writes a
	// zero-length slot there instead of following the index.
	pos := b.rx.Head()
	rs := b.rx.Slot(pos)
	saved := rs.BufIdx
	rs.BufIdx = 0xffffffff
	b.rx.SetSlot(pos, rs)
	a.send(eth(mac(0xb), mac(0xa), 60, 3), eth(mac(0xb), mac(0xa), 60, 4))
	slots := b.recvSlots()
	require.Len(t, slots, 2)
	assert.Empty(t, slots[0].data)
	assert.Equal(t, uint32(4), tags([][]byte{slots[1].data})[0])
	rs = b.rx.Slot(pos)
	rs.BufIdx = saved
	b.rx.SetSlot(pos, rs)

	ca, cb := ps[0].Counters(), ps[1].Counters()
	assert.Equal(t, uint64(2), ca.RingReinits)
	assert.Equal(t, uint64(1), cb.RingReinits)
	assert.GreaterOrEqual(t, ca.BadSlots, uint64(1))
	assert.Equal(t, uint64(1), cb.BadSlots)

	// And the switch still works both ways.
	a.send(eth(mac(0xb), mac(0xa), 60, 5))
	b.send(eth(mac(0xa), mac(0xb), 60, 6))
	assert.Equal(t, []uint32{5}, tags(b.recv()))
	assert.Equal(t, []uint32{6}, tags(a.recv()))
}

func TestDetachForgetsPortAndReusesIndex(t *testing.T) {
	s, ps, us := newPorts(t, 3, 64)
	a, c := us[0], us[2]
	us[1].send(eth(mac(0xa), mac(0xb), 60, 0)) // learn b on port 1
	a.recv()
	c.recv()
	bIdx := ps[1].Index()
	require.NoError(t, ps[1].Detach())
	require.ErrorIs(t, ps[1].Detach(), ErrNotAttached)
	_, ok := s.Learning().Where(mac(0xb))
	assert.False(t, ok, "learning table still points at a detached port")

	// The index is reused; the newcomer gets floods but not b's unicast by mistake
	// (the entry is gone: a frame to b floods, which is what an unknown MAC does).
	p, err := s.NewPort("d", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer p.Detach()
	assert.Equal(t, bIdx, p.Index())
	d := newUser(t, p)
	a.send(eth(mac(0xb), mac(0xa), 60, 1))
	assert.Equal(t, []uint32{1}, tags(d.recv()))
	assert.Equal(t, []uint32{1}, tags(c.recv()))

	names := []string{}
	for _, p := range s.Ports() {
		names = append(names, p.Name())
	}
	assert.Equal(t, []string{"a", "d", "c"}, names)
	_, err = s.NewPort("a", netmap.PortConfig{})
	assert.ErrorIs(t, err, ErrNameInUse)
	assert.Equal(t, p, s.PortByName("d"))
}

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	for i := 0; i < MaxSwitches; i++ {
		_, err := r.Switch(fmt.Sprintf("vale%d", i))
		require.NoError(t, err)
	}
	_, err := r.Switch("vale99")
	require.ErrorIs(t, err, ErrTooManySwitches)
	s, err := r.Switch("vale3") // existing: no new switch needed
	require.NoError(t, err)
	assert.Equal(t, s, r.Get("vale3"))
	for _, bad := range []string{"", "eth0", "vale0:1", "vale a", "valeXXXXXXXXXXXXXXXX"} {
		_, err := r.Switch(bad)
		assert.Error(t, err, bad)
	}

	p, err := r.NewPort("vale3:vm1@conf:slots=128,rings=2", netmap.PortConfig{})
	require.NoError(t, err)
	assert.Equal(t, 2, p.Netmap().NumTxRings())
	assert.Equal(t, uint32(128), p.Netmap().TxRing(0).NumSlots())
	assert.Equal(t, "vale3:vm1", p.Netmap().Name())
	_, err = r.NewPort("netmap:eth0", netmap.PortConfig{})
	assert.Error(t, err)
	require.Error(t, r.Destroy("vale3"), "destroyed a switch with ports")
	require.NoError(t, p.Detach())
	require.NoError(t, r.Destroy("vale3"))
	assert.Nil(t, r.Get("vale3"))
	_, err = r.Switch("vale99")
	require.NoError(t, err)
	assert.Len(t, r.Switches(), MaxSwitches)
}

func TestMultipleRings(t *testing.T) {
	s, err := New("vale1")
	require.NoError(t, err)
	a, err := s.NewPort("a", netmap.PortConfig{TxRings: 2, RxRings: 2, TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer a.Detach()
	b, err := s.NewPort("b", netmap.PortConfig{TxRings: 3, RxRings: 3, TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer b.Detach()
	// Frames from b's TX ring 2 land in a's RX ring 2 mod 2 = 0; ring 1 -> ring 1.
	np := b.Netmap()
	for ring, tag := range map[int]uint32{1: 11, 2: 22} {
		r := np.UserRing(np.TxRing(ring))
		sl := r.Slot(r.Head())
		copy(r.Buf(sl.BufIdx), eth(bcastMAC, mac(0xb), 60, tag))
		sl.Len = 60
		r.SetSlot(r.Head(), sl)
		r.Advance(1)
		require.NoError(t, b.TxSync(ring))
	}
	for ring, tag := range map[int]uint32{0: 22, 1: 11} {
		require.NoError(t, a.RxSync(ring))
		r := a.Netmap().UserRing(a.Netmap().RxRing(ring))
		require.Equal(t, uint32(1), r.Space(), "ring %d", ring)
		assert.Equal(t, tag, tags([][]byte{r.SlotBuf(r.Head())[:60]})[0])
	}
	require.Error(t, a.TxSync(5))
}

func TestWriteList(t *testing.T) {
	r := NewRegistry()
	p, err := r.NewPort("vale0:vm1", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer p.Detach()
	q, err := r.NewPort("vale0:vm2", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer q.Detach()
	_, err = r.Switch("vale1")
	require.NoError(t, err)
	newUser(t, p).send(eth(mac(2), mac(1), 60, 0), eth(mac(2), mac(1), 60, 0))
	var buf bytes.Buffer
	require.NoError(t, r.WriteList(&buf))
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 4, buf.String())
	assert.Equal(t, []string{"SWITCH", "PORT", "NAME", "RX_FRAMES", "RX_BYTES", "TX_FRAMES", "TX_BYTES", "DROPS", "NOSPACE", "BAD"}, strings.Fields(lines[0]))
	assert.Equal(t, []string{"vale0", "0", "vm1", "0", "0", "2", "120", "0", "0", "0"}, strings.Fields(lines[1]))
	assert.Equal(t, []string{"vale0", "1", "vm2", "2", "120", "0", "0", "0", "0", "0"}, strings.Fields(lines[2]))
	assert.Equal(t, "vale1", strings.Fields(lines[3])[0])
}

// TestConcurrentSenders runs several senders into one receiver and checks that every
// frame is either delivered or counted as dropped (run with -race).
func TestConcurrentSenders(t *testing.T) {
	const senders, frames = 3, 2000
	_, ps, us := newPorts(t, senders+1, 256)
	sink := us[senders]
	sink.send(eth(bcastMAC, mac(0xee), 60, 0)) // learn the sink
	for i := 0; i < senders; i++ {
		us[i].recv()
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	received := 0
	var recvErr error
	go func() { // the sink drains until the senders are done, then once more
		for {
			select {
			case <-stop:
				received += len(sink.recv())
				close(stop)
				return
			default:
				received += len(sink.recv())
			}
		}
	}()
	for i := 0; i < senders; i++ {
		wg.Add(1)
		go func(u *user, id byte) {
			defer wg.Done()
			for n := 0; n < frames; {
				var fs [][]byte
				for k := 0; k < 32 && n < frames; k++ {
					fs = append(fs, eth(mac(0xee), mac(id), 60, uint32(n)))
					n++
				}
				if q := u.queue(fs...); q != len(fs) {
					recvErr = errors.New("tx ring full: the switch should have returned every slot")
					return
				}
				if err := u.p.TxSync(0); err != nil {
					recvErr = err
					return
				}
			}
		}(us[i], byte(i+1))
	}
	wg.Wait()
	stop <- struct{}{}
	<-stop
	require.NoError(t, recvErr)
	c := ps[senders].Counters()
	assert.Equal(t, uint64(senders*frames), uint64(received)+c.DropNoSpace)
	assert.Equal(t, uint64(received), c.RxFrames)
	assert.Greater(t, received, 0)
}

// TestExternalDriverSyncCSB drives a port the way a ptnet host loop does: head/cur
// come from the CSB, not from the ring header, and the forwarding runs in that sync.
func TestExternalDriverSyncCSB(t *testing.T) {
	_, ps, us := newPorts(t, 2, 64)
	a, b := us[0], us[1]
	np := ps[0].Netmap()
	tk := np.TxRing(0)
	// Fill two slots but leave the ring header's head alone (the guest publishes
	// head in the CSB).
	r := a.tx
	for i, tag := range []uint32{1, 2} {
		sl := r.Slot(uint32(i))
		copy(r.Buf(sl.BufIdx), eth(bcastMAC, mac(0xa), 60, tag))
		sl.Len = 60
		r.SetSlot(uint32(i), sl)
	}
	hwcur, hwtail, err := tk.SyncCSB(2, 2, netmap.ForceReclaim)
	require.NoError(t, err)
	assert.Equal(t, uint32(2), hwcur)
	assert.Equal(t, uint32(1), hwtail, "TX slots come back at once")
	assert.Equal(t, uint32(0), r.Head(), "SyncCSB must not touch the ring header")
	assert.Equal(t, []uint32{1, 2}, tags(b.recv()))

	// The RX side the same way: SyncCSB imports, and a notify fires on delivery.
	rk := ps[1].Netmap().RxRing(0)
	notified := 0
	rk.SetNotify(func() { notified++ })
	defer rk.SetNotify(nil)
	a.send(eth(bcastMAC, mac(0xa), 60, 3))
	assert.Equal(t, 1, notified)
	head := rk.State().HwCur
	_, hwtail, err = rk.SyncCSB(head, head, netmap.ForceRead)
	require.NoError(t, err)
	assert.Equal(t, (head+1)%64, hwtail)
	// A CSB head outside [hwcur, hwtail] is refused like a bad ring header.
	_, _, err = rk.SyncCSB(hwtail+5, hwtail+5, 0)
	assert.ErrorIs(t, err, netmap.ErrRingReinit)
}

func TestPortLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 254 ports (one memfd region each)")
	}
	s, err := New("vale7")
	require.NoError(t, err)
	var ps []*Port
	defer func() {
		for _, p := range ps {
			p.Detach()
		}
	}()
	for i := 0; i < MaxPorts; i++ {
		p, err := s.NewPort(fmt.Sprint(i), netmap.PortConfig{TxSlots: 4, RxSlots: 4, BufSize: 128})
		require.NoError(t, err)
		require.Equal(t, i, p.Index())
		ps = append(ps, p)
	}
	_, err = s.NewPort("one-too-many", netmap.PortConfig{TxSlots: 4, RxSlots: 4, BufSize: 128})
	require.ErrorIs(t, err, ErrSwitchFull)
	// A broadcast from the last port reaches all 253 others.
	u := newUser(t, ps[MaxPorts-1])
	u.send(eth(bcastMAC, mac(1), 60, 1))
	for _, p := range ps[:MaxPorts-1] {
		require.Equal(t, uint64(1), p.Counters().RxFrames, "port %d", p.Index())
	}
}

func TestNoLearnFlag(t *testing.T) {
	s, _, us := newPorts(t, 2, 64)
	a := us[0]
	r := a.tx
	sl := r.Slot(r.Head())
	copy(r.Buf(sl.BufIdx), eth(mac(0xb), mac(0xa), 60, 1))
	sl.Len, sl.Flags = 60, netmap.NSNoLearn
	r.SetSlot(r.Head(), sl)
	r.Advance(1)
	require.NoError(t, a.p.TxSync(0))
	assert.Equal(t, []uint32{1}, tags(us[1].recv()))
	_, ok := s.Learning().Where(mac(0xa))
	assert.False(t, ok, "NS_NO_LEARN source was learned")
	a.send(eth(mac(0xb), mac(0xa), 60, 2))
	_, ok = s.Learning().Where(mac(0xa))
	assert.True(t, ok)
}

func TestAttachExistingPortOnce(t *testing.T) {
	s1, err := New("vale1")
	require.NoError(t, err)
	s2, err := New("vale2")
	require.NoError(t, err)
	np, err := netmap.NewPort(netmap.PortConfig{Name: "ext", TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer np.Close()
	p, err := s1.Attach("ext", np)
	require.NoError(t, err)
	_, err = s2.Attach("ext", np)
	require.Error(t, err, "one netmap port on two switches")
	_, err = s1.Attach("ext2", np)
	require.Error(t, err)
	other, err := s1.NewPort("o", netmap.PortConfig{TxSlots: 64, RxSlots: 64})
	require.NoError(t, err)
	defer other.Detach()
	newUser(t, p).send(eth(bcastMAC, mac(1), 60, 1))
	assert.Equal(t, []uint32{1}, tags(newUser(t, other).recv()))

	require.NoError(t, p.Detach())
	// Given back unclosed: its TX ring no longer forwards, and it can move.
	newUser(t, p).send(eth(bcastMAC, mac(1), 60, 2))
	assert.Empty(t, newUser(t, other).recv())
	p2, err := s2.Attach("ext", np)
	require.NoError(t, err)
	require.NoError(t, p2.Detach())
}
