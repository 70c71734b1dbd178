package virtionet

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/devices/virtio"
	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm/memory"
)

// Guest memory of the RX fuzz target: one 16-entry queue, its indirect tables, and a
// fixed buffer area per descriptor, so buffers of chains in flight never overlap.
const (
	fzRAM      = 0x20000
	fzQ        = 16
	fzDesc     = 0x0000
	fzAvail    = 0x0100
	fzUsed     = 0x0200
	fzIndir    = 0x0400 // table of main descriptor d at fzIndir + 64*d (4 entries)
	fzTxRing   = 0x0800 // an idle TX queue: desc, avail +0x100, used +0x200
	fzBuf      = 0x1000 // main descriptor d: fzBuf + 2048*d
	fzIndirBuf = 0x9000 // entry j of table d: fzIndirBuf + 1024*(4*d+j)
)

// fzPort is a backend holding frames queued by the fuzz program; it counts every frame
// taken from it.
type fzPort struct {
	frames [][]byte
	taken  int
}

func (p *fzPort) Name() string                      { return "fuzz" }
func (p *fzPort) Send(frames [][]byte) (int, error) { return len(frames), nil }
func (p *fzPort) ReadyFD() int                      { return -1 }
func (p *fzPort) Close() error                      { return nil }
func (p *fzPort) Recv(bufs [][]byte, lens []int) (int, error) {
	if len(p.frames) == 0 || len(bufs) == 0 {
		return 0, nil
	}
	lens[0] = copy(bufs[0], p.frames[0])
	p.frames = p.frames[1:]
	p.taken++
	return 1, nil
}

// fzVPort adds the scatter read of a socket or TAP: no room reads nothing (as
// readv(2) with empty iovecs on a socket), else the frame is taken and cut to fit.
type fzVPort struct{ fzPort }

func (p *fzVPort) Writev(iovs [][]byte) (int, error) { return 0, nil }
func (p *fzVPort) Readv(iovs [][]byte) (int, error) {
	room := 0
	for _, v := range iovs {
		room += len(v)
	}
	if len(p.frames) == 0 || room == 0 {
		return 0, nil
	}
	f := p.frames[0]
	p.frames = p.frames[1:]
	p.taken++
	n := 0
	for _, v := range iovs {
		n += copy(v, f[n:])
	}
	return n, nil
}

var _ backends.Port = (*fzPort)(nil)

// fzProg reads the fuzz program a byte at a time (zeros once it runs out).
type fzProg struct{ b []byte }

func (r *fzProg) more() bool { return len(r.b) > 0 }
func (r *fzProg) next() byte {
	if len(r.b) == 0 {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

// fzChain is a chain the guest made available: its descriptors and the writable
// buffers the device may fill, in order.
type fzChain struct {
	descs []uint16
	wbufs [][2]uint64 // gpa, len
}

// fzGuest is the driver side: it posts random chains, reads the used ring, and checks
// every used entry against what it offered and what the backend sent.
type fzGuest struct {
	t           *testing.T
	ram         []byte
	free        []uint16
	out         map[uint16]*fzChain
	availIdx    uint16
	usedSeen    uint16
	mrg         bool
	expect      [][]byte // every frame given to the backend, as the guest should see it
	matched     int      // frames delivered and checked
	last        int      // index in expect of the last delivered frame
	cur         []byte   // a mergeable frame being reassembled
	curN, curNB int
}

var fzLens = [...]uint32{0, 1, 11, 12, 25, 26, 40, 60, 100, 500, 1000, 1024, 1530, 2048}

// bufLen picks a buffer length up to max.
func (g *fzGuest) bufLen(r *fzProg, max uint32) uint32 {
	return min(fzLens[int(r.next())%len(fzLens)], max)
}

func (g *fzGuest) putDesc(at uint64, addr uint64, ln uint32, flags, next uint16) {
	binary.LittleEndian.PutUint64(g.ram[at:], addr)
	binary.LittleEndian.PutUint32(g.ram[at+8:], ln)
	binary.LittleEndian.PutUint16(g.ram[at+12:], flags)
	binary.LittleEndian.PutUint16(g.ram[at+14:], next)
}

// buffer picks one buffer of a chain: writable (most), readable, or outside RAM.
func (g *fzGuest) buffer(r *fzProg, addr uint64, max uint32, c *fzChain) (uint64, uint32, uint16) {
	switch r.next() % 8 {
	case 5:
		return addr, 16, 0
	case 6:
		return fzRAM - 8, 16, virtio.DescFWrite
	default:
		ln := g.bufLen(r, max)
		c.wbufs = append(c.wbufs, [2]uint64{addr, uint64(ln)})
		return addr, ln, virtio.DescFWrite
	}
}

// post makes one chain available: 1-3 direct descriptors or an indirect table of 1-4.
func (g *fzGuest) post(r *fzProg, indirect bool) {
	if len(g.free) == 0 {
		return
	}
	c := &fzChain{}
	if kind := r.next(); indirect && kind%4 == 3 {
		d := g.free[0]
		g.free = g.free[1:]
		c.descs = []uint16{d}
		m := 1 + int(r.next()%4)
		tbl := uint64(fzIndir + 64*int(d))
		for j := 0; j < m; j++ {
			addr, ln, fl := g.buffer(r, uint64(fzIndirBuf+1024*(4*int(d)+j)), 1024, c)
			if j < m-1 {
				fl |= virtio.DescFNext
			}
			g.putDesc(tbl+16*uint64(j), addr, ln, fl, uint16(j+1))
		}
		g.putDesc(fzDesc+16*uint64(d), tbl, uint32(16*m), virtio.DescFIndirect, 0)
	} else {
		k := min(1+int(kind%3), len(g.free))
		c.descs = append([]uint16(nil), g.free[:k]...)
		g.free = g.free[k:]
		for i, d := range c.descs {
			addr, ln, fl := g.buffer(r, uint64(fzBuf+2048*int(d)), 2048, c)
			next := uint16(0)
			if i < k-1 {
				fl |= virtio.DescFNext
				next = c.descs[i+1]
			}
			g.putDesc(fzDesc+16*uint64(d), addr, ln, fl, next)
		}
	}
	head := c.descs[0]
	g.out[head] = c
	binary.LittleEndian.PutUint16(g.ram[fzAvail+4+2*uint64(g.availIdx%fzQ):], head)
	g.availIdx++
	virtio.StoreLE16(g.ram[fzAvail+2:], g.availIdx)
}

// consume reads the new used entries: each must name a chain offered and not yet
// returned; the bytes of each delivered frame must be a prefix of the next frames
// the backend sent (some may have been dropped), with num_buffers right.
func (g *fzGuest) consume() {
	for g.usedSeen != virtio.LoadLE16(g.ram[fzUsed+2:]) {
		off := fzUsed + 4 + 8*uint64(g.usedSeen%fzQ)
		id := binary.LittleEndian.Uint32(g.ram[off:])
		ln := binary.LittleEndian.Uint32(g.ram[off+4:])
		g.usedSeen++
		require.Less(g.t, id, uint32(fzQ), "used id outside the queue")
		c := g.out[uint16(id)]
		require.NotNil(g.t, c, "used entry for chain %d, which was never offered (or was returned already)", id)
		delete(g.out, uint16(id))
		g.free = append(g.free, c.descs...)
		if ln == 0 {
			require.Nil(g.t, g.cur, "an empty used entry inside a mergeable frame")
			continue
		}
		var data []byte
		for _, b := range c.wbufs {
			data = append(data, g.ram[b[0]:b[0]+b[1]]...)
		}
		require.LessOrEqual(g.t, int(ln), len(data), "chain %d: used length %d over its %d writable bytes", id, ln, len(data))
		data = data[:ln]
		if !g.mrg {
			g.frame(data, 1)
			continue
		}
		g.cur = append(g.cur, data...)
		g.curN++
		if g.curNB == 0 && len(g.cur) >= modernHdrLen {
			g.curNB = int(binary.LittleEndian.Uint16(g.cur[10:]))
			require.NotZero(g.t, g.curNB, "num_buffers 0")
		}
		if g.curNB != 0 {
			require.LessOrEqual(g.t, g.curN, g.curNB, "more buffers than num_buffers")
			if g.curN == g.curNB {
				g.frame(g.cur, g.curNB)
				g.cur, g.curN, g.curNB = nil, 0, 0
			}
		}
	}
}

// frame checks one delivered frame against the frames sent after the last one seen.
func (g *fzGuest) frame(data []byte, nb int) {
	require.GreaterOrEqual(g.t, len(data), modernHdrLen+14, "a delivered frame shorter than its headers")
	require.Equal(g.t, nb, int(binary.LittleEndian.Uint16(data[10:])), "num_buffers")
	for k := g.last + 1; k < len(g.expect); k++ {
		if bytes.Equal(data[:10], g.expect[k][:10]) && bytes.HasPrefix(g.expect[k][12:], data[12:]) {
			g.last = k
			g.matched++
			return
		}
	}
	g.t.Fatalf("delivered %d bytes that are no frame the backend sent after #%d: % x", len(data), g.last, data[:min(len(data), 32)])
}

// FuzzRX drives a guest's RX ring against the worker's service pass: random chains (direct,
// indirect, readable-only, zero-length, outside RAM), mergeable buffers on and off,
// frames of random sizes from a copying or a scatter-reading backend, passes and used
// ring reads in any order. It fails on a pass that does not return, a used entry for a
// chain never offered (or returned twice), wrong frame bytes, and a frame taken from
// the backend that was neither delivered nor counted as dropped.
func FuzzRX(f *testing.F) {
	// Program: promisc byte, then ops. 0 post: kind (k=1+kind%3 descriptors, or with
	// indirect kind%4==3: an m-entry table, m=1+byte%4), per buffer a selector (%8: 5
	// readable, 6 outside RAM, else writable and a length index into fzLens); 1 frame:
	// two size bytes, a destination byte; 2 pass; 3 read the used ring.
	//
	// The issue 9 scenarios: a 100-byte chain, a chain outside RAM, a 500-byte frame,
	// a pass, then a 2048-byte chain (mergeable) ...
	f.Add([]byte{0, 0, 0, 0, 8, 0, 0, 6, 1, 1, 243, 0, 2, 3, 0, 0, 0, 13, 2, 3}, true, false, true, false)
	// ... a frame, a readable-only chain, an 11-byte chain, a good one (not mergeable).
	f.Add([]byte{0, 1, 1, 243, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0, 13, 2, 3}, false, true, false, false)
	f.Add([]byte{0, 1, 1, 243, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0, 13, 2, 3}, false, false, true, false)
	// Small mergeable buffers, frames larger than them, one too large for any.
	f.Add([]byte{0, 0, 2, 0, 7, 0, 7, 0, 7, 0, 0, 0, 9, 1, 6, 0, 0, 1, 0, 99, 2, 2, 3, 2, 3, 0, 0, 0, 13, 2, 3}, true, true, true, false)
	// An indirect table (readable, then writable buffers), a filtered frame, a
	// broadcast one.
	f.Add([]byte{1, 0, 3, 3, 5, 0, 7, 0, 7, 0, 12, 1, 0, 80, 3, 1, 3, 0, 2, 2, 2, 3}, true, false, false, true)
	f.Fuzz(func(t *testing.T, prog []byte, mrg, vport, eventIdx, indirect bool) {
		if len(prog) > 4096 {
			return
		}
		g := &fzGuest{t: t, ram: make([]byte, fzRAM), out: map[uint16]*fzChain{}, mrg: mrg, last: -1}
		for i := uint16(0); i < fzQ; i++ {
			g.free = append(g.free, i)
		}
		mem, err := memory.FromBytes([]memory.Region{{Range: memory.Range{GPA: 0, Size: fzRAM}, Host: g.ram, FD: -1}})
		require.NoError(t, err)
		q, err := virtio.NewQueue(mem, virtio.QueueConfig{Size: fzQ, Desc: fzDesc, Avail: fzAvail, Used: fzUsed, EventIdx: eventIdx, IndirectDesc: indirect})
		require.NoError(t, err)
		var port backends.Port
		var fp *fzPort
		if vport {
			vp := &fzVPort{}
			port, fp = vp, &vp.fzPort
		} else {
			fp = &fzPort{}
			port = fp
		}
		mac := [6]byte{0x52, 0x54, 0, 0, 0, 1}
		d, err := New(Config{MAC: mac, Ports: []backends.Port{port}, VnetHdr: vport, QueueSize: fzQ})
		require.NoError(t, err)
		r := &fzProg{b: prog}
		d.promisc = r.next()%2 == 0
		features := uint64(virtio.FVersion1 | FMAC)
		if mrg {
			features |= FMrgRxbuf
		}
		txq, err := virtio.NewQueue(mem, virtio.QueueConfig{Size: fzQ, Desc: fzTxRing, Avail: fzTxRing + 0x100, Used: fzTxRing + 0x200, EventIdx: eventIdx})
		require.NoError(t, err)
		p := newPair(d, 0, &virtio.QueueHandle{Queue: q}, &virtio.QueueHandle{Queue: txq, Index: 1}, features, hdrLen(features))
		p.alwaysRead = true // no readiness fd: every pass tries the backend
		p.again, err = notify.NewEventFD()
		require.NoError(t, err)
		defer p.again.Close()

		// A pass that does not return is a hang: crash with the input.
		watchdog := time.AfterFunc(time.Hour, func() {})
		defer watchdog.Stop()
		pass := func() {
			watchdog.Stop()
			watchdog = time.AfterFunc(10*time.Second, func() { panic("FuzzRX: a receive pass did not return in 10 s") })
			p.rxReady = true
			p.pass() // the worker's whole pass, bounded
			watchdog.Stop()
			q.Flush()
		}
		seq := byte(0)
		for r.more() {
			switch r.next() % 4 {
			case 0:
				g.post(r, indirect)
			case 1:
				n := 1 + (int(r.next())<<8|int(r.next()))%1700
				dst := mac
				switch r.next() % 4 {
				case 2:
					dst = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
				case 3:
					dst = [6]byte{2, 9, 9, 9, 9, 9}
				}
				seq++
				eth := bytes.Repeat([]byte{seq}, n)
				copy(eth, dst[:])
				copy(eth[min(6, n):], []byte{2, 0, 0, 0, 0, seq})
				wire := append(make([]byte, modernHdrLen), eth...)
				g.expect = append(g.expect, wire) // header zero either way (num_buffers aside)
				if vport {
					fp.frames = append(fp.frames, wire)
				} else {
					fp.frames = append(fp.frames, eth)
				}
			case 2:
				pass()
			case 3:
				g.consume()
			}
		}
		// Let the device finish what it can, reading the used ring between passes.
		for i := 0; i < 2*fzQ; i++ {
			pass()
			g.consume()
		}
		st := d.Stats()[0]
		stashed := 0
		if p.stashLen > 0 {
			stashed = 1
		}
		require.Equal(t, fp.taken, int(st.RxPackets+st.RxDropped)+stashed,
			"frames taken from the backend %d != delivered %d + dropped %d + waiting %d", fp.taken, st.RxPackets, st.RxDropped, stashed)
		require.Equal(t, g.matched, int(st.RxPackets), "frames the guest saw")
		require.Nil(t, g.cur, "a mergeable frame published without all its buffers")
	})
}
