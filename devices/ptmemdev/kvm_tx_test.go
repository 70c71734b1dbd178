package ptmemdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/vale"
	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/internal/kvmtest"
	"github.com/ptvmm/ptvmm/vmm/boot"
)

// The guest-TX rig: a CPL3 micro guest (micro.PtnetTX) is the TX side of netmap's ptnet
// driver for ring 0 of a ptnet whose port is on switch vale0; a receiver on another
// port of vale0 counts the frames and grants the guest credit. The test plays the
// driver's set-up role through the device registers (CSB, PTCTL CREATE); from then on
// every frame goes guest slot -> CSB head -> (kick only when asked: ioeventfd) -> host
// loop txsync -> switch copy -> receiver, with no exit to Go.

const (
	txCounters = boot.MicroDataAddr      // kicks, room waits, credit waits
	txCredit   = boot.MicroDataAddr + 64 // qword the receiver raises
	txGH       = boot.MicroDataAddr + 0x10000
	txHG       = boot.MicroDataAddr + 0x11000
	txSlots    = 1024
	txWindow   = 512 // frames in flight: the receiver's RX ring never overflows
	txSeqOff   = 14  // sequence number right after the Ethernet header
)

type txRig struct {
	tb      testing.TB
	g       *kvmRig
	sw      *vale.Switch
	vm      *vale.Port
	rx      *vale.Endpoint
	port    *netmap.Port
	frameLn int
}

func newTXRig(tb testing.TB, frameLen int) *txRig {
	t := tb
	t.Helper()
	sw, err := vale.New("vale0")
	require.NoError(t, err)
	r := &txRig{tb: tb, sw: sw, frameLn: frameLen}
	cfg := netmap.PortConfig{TxSlots: txSlots, RxSlots: txSlots}
	r.vm, err = sw.NewPort("vm", cfg)
	require.NoError(t, err)
	tb.Cleanup(func() { r.vm.Detach() }) // after the device's cleanup: the loop stops first
	r.rx, err = sw.OpenEndpoint("rx", cfg)
	require.NoError(t, err)
	tb.Cleanup(func() { r.rx.Close() })
	r.port = r.vm.Netmap()
	r.g = newKVMRig(tb, r.port, false) // PtnetTX runs at CPL3 throughout

	// The frame in every TX buffer: the guest only stamps the sequence number.
	frame := make([]byte, frameLen)
	copy(frame, []byte{0x02, 0, 0, 0, 0, 0x01})
	copy(frame[6:], testMAC[:])
	binary.BigEndian.PutUint16(frame[12:], 0x88b5) // local experimental ethertype
	k := r.port.TxRing(0)
	reg := r.port.Region()
	for i := uint32(0); i < k.NumSlots(); i++ {
		buf := reg.Buf(k.SlotAt(i).BufIdx)
		require.NotNil(t, buf)
		copy(buf, frame)
	}

	// The driver's register step, done by the host through the device.
	d := r.g.d
	wr := func(off uint64, v uint32) { d.Write(off, binary.LittleEndian.AppendUint32(nil, v)) }
	rd := func(off uint64) uint32 {
		var b [4]byte
		d.Read(off, b[:])
		return binary.LittleEndian.Uint32(b[:])
	}
	wr(RegCSBGHBAH, 0)
	wr(RegCSBGHBAL, txGH)
	wr(RegCSBHGBAH, 0)
	wr(RegCSBHGBAL, txHG)
	wr(RegPtctl, PtctlCreate)
	require.Zero(t, rd(RegPtctl), "PTCTL CREATE")
	return r
}

type rxResult struct {
	frames, bytes uint64
	err           error
}

// receive drains the rx port until frames arrived (or stop), checking sequence
// numbers and raising the guest's credit.
func (r *txRig) receive(frames uint64, stop <-chan struct{}) rxResult {
	var res rxResult
	credit, err := r.g.g.Mem.Slice(txCredit, 8)
	if err != nil {
		return rxResult{err: err}
	}
	bufs, lens := make([][]byte, 64), make([]int, 64)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	fds := []unix.PollFd{{Fd: int32(r.rx.ReadyFD()), Events: unix.POLLIN}}
	for res.frames < frames {
		n, err := r.rx.Recv(bufs, lens)
		if err != nil {
			res.err = err
			return res
		}
		for i := range n {
			if seq := binary.LittleEndian.Uint32(bufs[i][txSeqOff:]); uint64(seq) != res.frames&0xffffffff {
				res.err = fmt.Errorf("frame %d has sequence number %d", res.frames, seq)
				return res
			}
			if lens[i] != r.frameLn {
				res.err = fmt.Errorf("frame %d is %d bytes, want %d", res.frames, lens[i], r.frameLn)
				return res
			}
			res.frames++
			res.bytes += uint64(lens[i])
		}
		if n > 0 {
			storeQword(credit, res.frames+txWindow)
			continue
		}
		select {
		case <-stop:
			res.err = errors.New("receiver stopped")
			return res
		default:
		}
		_, _ = unix.Poll(fds, 10)
	}
	return res
}

type txRun struct {
	frames, kicks, roomWaits, creditWaits uint64
	exits, mmioExits                      uint64
	elapsed                               time.Duration
	rx                                    rxResult
	loop                                  netmap.KloopStats
}

// run loads a PtnetTX program for frames frames in batches of batch and runs it with
// the receiver; it returns when both are done (or timeout).
func (r *txRig) run(frames uint64, batch uint32, timeout time.Duration) txRun {
	tb := r.tb
	g := r.g
	reg := r.port.Region()
	k := r.port.TxRing(0)
	bufSize := uint64(reg.BufSize())
	require.Equal(tb, 1, bits.OnesCount64(bufSize), "buffer size %d is not a power of two", bufSize)
	spec := micro.PtnetTXSpec{
		Slots: g.bar.mem + k.Offset() + netmap.RingSlotsOff, NumSlots: k.NumSlots(),
		BufBase: g.bar.mem + reg.PoolsInfo().BufPoolOffset, BufShift: uint8(bits.TrailingZeros64(bufSize)),
		Atok: txGH, Ktoa: txHG, Kick: g.bar.regs + RegKickBase,
		Batch: batch, Frames: frames, FrameLen: uint16(r.frameLn), SeqOff: txSeqOff,
		Credit: txCredit, Counters: txCounters,
	}
	code, err := micro.PtnetTX(boot.MicroCodeAddr, spec)
	require.NoError(tb, err)
	require.NoError(tb, g.g.Mem.WriteAt(code, boot.MicroCodeAddr))
	credit, err := g.g.Mem.Slice(txCredit, 8)
	require.NoError(tb, err)
	storeQword(credit, txWindow)
	for i := uint64(0); i < 3; i++ {
		require.NoError(tb, g.g.Mem.Write64(txCounters+8*i, 0))
	}
	exits0, mmio0 := g.g.Exits(), g.g.MMIOExits.Load()
	stop := make(chan struct{})
	rxDone := make(chan rxResult, 1)
	go func() { rxDone <- r.receive(frames, stop) }()
	start := time.Now()
	v, err := g.g.Run(timeout)
	var out txRun
	select {
	case out.rx = <-rxDone:
	case <-time.After(timeout):
		close(stop)
		out.rx = <-rxDone
	}
	out.elapsed = time.Since(start)
	out.frames = frames
	out.kicks, out.roomWaits, out.creditWaits = g.g.Uint64(txCounters), g.g.Uint64(txCounters+8), g.g.Uint64(txCounters+16)
	out.exits, out.mmioExits = g.g.Exits()-exits0, g.g.MMIOExits.Load()-mmio0
	if ls := g.d.LoopStats(); len(ls) > 0 {
		out.loop = ls[0]
	}
	require.NoError(tb, err, "guest: kicks %d, room waits %d, credit waits %d; loop %+v; receiver %d frames, %v",
		out.kicks, out.roomWaits, out.creditWaits, out.loop, out.rx.frames, out.rx.err)
	require.Equal(tb, uint32(frames), v, "guest report")
	return out
}

// TestKVMPtnetTXIntoVale: the guest sends 60-byte and 1514-byte frames through ptnet
// into vale0; the receiver gets every one, in order; the switch drops none; the
// guest's only exit is its final report and no KICK trapped.
func TestKVMPtnetTXIntoVale(t *testing.T) {
	kvmtest.Available(t)
	for _, size := range []int{60, 1514} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			r := newTXRig(t, size)
			const frames = 20_000
			res := r.run(frames, 32, 2*time.Minute)
			require.NoError(t, res.rx.err)
			assert.Equal(t, uint64(frames), res.rx.frames)
			assert.Equal(t, uint64(frames*size), res.rx.bytes)
			vc, rc := r.vm.Counters(), r.rx.SwitchPort().Counters()
			assert.Equal(t, uint64(frames), vc.TxFrames, "switch: frames from the guest")
			assert.Equal(t, uint64(frames), rc.RxFrames, "switch: frames to the receiver")
			assert.Zero(t, vc.Drops()+rc.Drops(), "drops")
			assert.Zero(t, vc.BadSlots+vc.RingReinits, "the guest's ring stayed valid")
			assert.Equal(t, uint64(1), res.mmioExits, "MMIO exits: only the final report")
			assert.Zero(t, r.g.d.Stats().TrappedKicks, "no KICK reached the VMM")
			assert.NotZero(t, res.kicks)
			assert.Less(t, res.kicks, uint64(frames), "kicks are suppressed")
			t.Logf("%d frames of %d B in %v (%.3f Mpps): %d kicks (%.4f per frame), %d ring-full waits, %d credit waits, %d exits; loop %+v",
				frames, size, res.elapsed, float64(frames)/res.elapsed.Seconds()/1e6, res.kicks,
				float64(res.kicks)/frames, res.roomWaits, res.creditWaits, res.exits, res.loop)
		})
	}
}

// BenchmarkKVMPtnetTX measures guest-to-switch throughput through ptnet at native guest
// speed (CPL3 micro guest, host loop, switch copy, receiver goroutine): Mpps, Gbit/s,
// kicks and exits per frame, ring-full and credit waits per batch. One op is 10000
// frames.
func BenchmarkKVMPtnetTX(b *testing.B) {
	kvmtest.Available(b)
	for _, size := range []int{60, 1514} {
		for _, batch := range []uint32{1, 64, 256} {
			b.Run(fmt.Sprintf("%dB/batch%d", size, batch), func(b *testing.B) {
				r := newTXRig(b, size)
				frames := uint64(b.N) * 10_000
				frames -= frames % uint64(batch)
				b.ResetTimer()
				res := r.run(frames, batch, 10*time.Minute)
				b.StopTimer()
				require.NoError(b, res.rx.err)
				require.Equal(b, frames, res.rx.frames, "frames received")
				sec := res.elapsed.Seconds()
				b.ReportMetric(float64(frames)/sec/1e6, "Mpps")
				b.ReportMetric(float64(res.rx.bytes)*8/sec/1e9, "Gbit/s")
				b.ReportMetric(float64(res.kicks)/float64(frames), "kicks/frame")
				b.ReportMetric(float64(res.exits)/float64(frames), "exits/frame")
				b.ReportMetric(float64(res.loop.Wakeups)/float64(frames), "wakeups/frame")
				batches := float64(frames / uint64(batch))
				b.ReportMetric(float64(res.roomWaits)/batches, "ringfull/batch")
				b.ReportMetric(float64(res.creditWaits)/batches, "nocredit/batch")
			})
		}
	}
}
