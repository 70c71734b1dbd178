package ptmemdev

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/pci"
)

// TestLinuxGuestProbe plays netmap's Linux ptnet driver (SPECS 3.5, 3.8) against the
// two devices as a guest sees them (configuration space, BAR0 registers, BAR1 bytes,
// guest RAM) and checks each value it relies on.
func TestLinuxGuestProbe(t *testing.T) {
	r := newRig(t, rigOpts{tx: 2, rx: 2, vnet: true})
	base := runtime.NumGoroutine()

	// memdev probe: MEMID (16 bits), MEMSIZE, the buffer pool.
	memID := uint16(r.mdReg(MemRegMemID))
	memSize := uint64(r.mdReg(MemRegMemsizeHi))<<32 | uint64(r.mdReg(MemRegMemsizeLo))
	bufOfs, bufSz, bufNum := r.mdReg(MemRegBufPoolOfs), r.mdReg(MemRegBufObjSz), r.mdReg(MemRegBufObjNum)
	bar1 := r.bar(r.mdFn, MemBAR)
	guestMem := r.mapper.mapped()[bar1] // what ioremap_cache(BAR1, MEMSIZE) sees
	require.GreaterOrEqual(t, uint64(len(guestMem)), memSize)
	require.LessOrEqual(t, uint64(bufOfs)+uint64(bufSz)*uint64(bufNum), memSize, "buffers inside MEMSIZE")

	// ptnet probe, in the driver's order.
	r.wr(RegPtfeat, FeatureVnetHdr)
	require.Equal(t, uint32(FeatureVnetHdr), r.rd(RegPtfeat))
	ntx, nrx := r.rd(RegNumTxRings), r.rd(RegNumRxRings)
	require.NotZero(t, ntx)
	require.NotZero(t, nrx)
	n := int(ntx + nrx)
	require.LessOrEqual(t, n, 64)
	r.csb(testGH, testHG) // two zeroed pages: GH_BAH, GH_BAL, HG_BAH, HG_BAL
	mac := [6]byte{byte(r.rd(RegMacHi) >> 8), byte(r.rd(RegMacHi)), byte(r.rd(RegMacLo) >> 24), byte(r.rd(RegMacLo) >> 16), byte(r.rd(RegMacLo) >> 8), byte(r.rd(RegMacLo))}
	assert.Equal(t, testMAC, mac)
	require.Equal(t, n, r.fn.MSIX().Vectors(), "exactly tx+rx vectors")
	r.fn.WriteConfig(pci.CapOffset+2, binary.LittleEndian.AppendUint16(nil, pci.MSIXCtrlEnable))
	nifp := r.rd(RegNifpOfs)
	txSlots, rxSlots := r.rd(RegNumTxSlots), r.rd(RegNumRxSlots)
	require.Equal(t, uint32(memID), r.rd(RegHostMemID), "pairs with the memdev")
	r.wr(RegVnetHdrLen, VnetHdrLen)
	require.Equal(t, uint32(VnetHdrLen), r.rd(RegVnetHdrLen))

	// The netmap_if and rings are valid inside BAR1.
	nif, err := netmap.OpenIf(guestMem[:memSize], uint64(nifp))
	require.NoError(t, err)
	require.Equal(t, int(ntx), nif.TxRings())
	require.Equal(t, int(nrx), nif.RxRings())
	for i := range int(ntx) {
		ring, err := nif.TxRing(i)
		require.NoError(t, err)
		assert.Equal(t, txSlots, ring.NumSlots())
		buf := ring.SlotBuf(0)
		require.NotNil(t, buf)
		assert.Len(t, buf, int(bufSz))
	}
	for i := range int(nrx) {
		ring, err := nif.RxRing(i)
		require.NoError(t, err)
		assert.Equal(t, rxSlots, ring.NumSlots())
	}

	// Register: need_kick flags, VNET_HDR_LEN, CREATE, read PTCTL, load the CSB.
	require.Zero(t, r.linuxRegister())
	for i := range n {
		head := r.ram32(testGH + uint64(i)*64 + netmap.CSBHeadOff)
		hwtail := r.ram32(testHG + uint64(i)*64 + netmap.CSBHwTailOff)
		if i < int(ntx) {
			assert.NotEqual(t, head, hwtail, "TX ring %d must not look full", i)
		}
	}
	// Unregister: appl_need_kick = 1 everywhere, DELETE, read PTCTL; remove: zero the CSB.
	for i := range n {
		r.setRAM32(testGH+uint64(i)*64+netmap.CSBApplNeedKickOff, 1)
	}
	require.Zero(t, r.ptctl(PtctlDelete))
	r.csb(0, 0)
	goroutinesBack(t, base)
}

// TestGuestTXThroughLoop drives frames from the guest side of the protocol (the
// netmap driver over BAR1 and the guest's CSB, kicking through the KICK register)
// through the device's host loop into a pipe whose far end receives every one.
func TestGuestTXThroughLoop(t *testing.T) {
	master, slave, err := netmap.NewPipe("pp", "1", netmap.PortConfig{TxSlots: 256, RxSlots: 256})
	require.NoError(t, err)
	defer slave.Close()
	defer master.Close()
	r := newRig(t, rigOpts{port: master, noBells: true})
	r.csb(testGH, testHG)
	require.Zero(t, r.linuxRegister())

	csb, err := netmap.NewCSB(r.ram[testGH:testGH+4096], r.ram[testHG:testHG+4096], r.n())
	require.NoError(t, err)
	irqs := []*notify.EventFD{r.vec.Event(0), r.vec.Event(1)}
	drv, err := netmap.NewDriver(netmap.DriverConfig{
		Mem: r.mapper.mapped()[r.bar(r.mdFn, MemBAR)], Nifp: uint64(r.rd(RegNifpOfs)), CSB: csb,
		Kick: func(i int) error { r.wr(RegKickBase+4*uint64(i), 1); return nil },
		Wait: netmap.EventFDWait(irqs),
	})
	require.NoError(t, err)

	ep, err := netmap.NewEndpoint(slave, false)
	require.NoError(t, err)
	defer ep.Close()
	const frames = 5000
	got := make(chan []uint32, 1)
	go func() {
		var seqs []uint32
		bufs, lens := [][]byte{make([]byte, 2048), make([]byte, 2048)}, make([]int, 2)
		deadline := time.Now().Add(30 * time.Second)
		for len(seqs) < frames && time.Now().Before(deadline) {
			k, err := ep.Recv(bufs, lens)
			if err != nil {
				break
			}
			for i := range k {
				seqs = append(seqs, binary.LittleEndian.Uint32(bufs[i][14:]))
			}
			if k == 0 {
				fds := []unix.PollFd{{Fd: int32(ep.ReadyFD()), Events: unix.POLLIN}}
				_, _ = unix.Poll(fds, 100)
			}
		}
		got <- seqs
	}()

	tx := drv.TxRing(0)
	ring := tx.Ring()
	for seq := 0; seq < frames; {
		ok, err := tx.Wait(10 * time.Second)
		require.NoError(t, err)
		require.True(t, ok, "TX room at frame %d", seq)
		for ring.Space() > 0 && seq < frames {
			h := ring.Head()
			s := ring.Slot(h)
			buf := ring.Buf(s.BufIdx)
			require.NotNil(t, buf)
			binary.LittleEndian.PutUint32(buf[14:], uint32(seq))
			s.Len, s.Flags = 60, 0
			ring.SetSlot(h, s)
			ring.Advance(1)
			seq++
		}
		require.NoError(t, tx.Sync(0))
	}
	seqs := <-got
	require.Len(t, seqs, frames)
	for i, s := range seqs {
		if uint32(i) != s {
			require.Equal(t, uint32(i), s, "frame %d out of order", i)
		}
	}
	st := tx.Stats()
	ls := r.d.LoopStats()
	t.Logf("%d frames: driver %+v, loop TX %+v, device %+v", frames, st, ls[0], r.d.Stats())
	assert.Less(t, st.Kicks, uint64(frames), "kicks are suppressed while the loop runs")
	assert.Equal(t, st.Kicks, r.d.Stats().TrappedKicks)
	assert.Zero(t, r.ptctl(PtctlDelete))
}
