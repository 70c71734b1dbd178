package vale

import (
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// user drives ring pair 0 of a switch port the way a netmap application does: fill
// TX slots from head, advance head/cur, sync; rxsync, read [head, tail), release.
type user struct {
	t  testing.TB
	p  *Port
	tx *netmap.Ring
	rx *netmap.Ring
}

func newUser(t testing.TB, p *Port) *user {
	np := p.Netmap()
	return &user{t: t, p: p, tx: np.UserRing(np.TxRing(0)), rx: np.UserRing(np.RxRing(0))}
}

func mac(b byte) []byte { return []byte{0x02, 0, 0, 0, 0, b} }

var bcastMAC = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// eth builds a frame dst, src, ethertype 0x88b5 (local experimental), then n-14
// payload bytes carrying tag.
func eth(dst, src []byte, n int, tag uint32) []byte {
	f := make([]byte, n)
	copy(f, dst)
	copy(f[6:], src)
	if n >= 14 {
		f[12], f[13] = 0x88, 0xb5
	}
	if n >= 18 {
		binary.BigEndian.PutUint32(f[14:], tag)
	}
	return f
}

// queue writes frames into TX slots (one slot each) without syncing; returns how many
// fitted.
func (u *user) queue(frames ...[]byte) int {
	r := u.tx
	head := r.Head()
	n := 0
	for _, f := range frames {
		if r.Space() <= uint32(n) {
			break
		}
		s := r.Slot(head)
		copy(r.Buf(s.BufIdx), f)
		s.Len, s.Flags = uint16(len(f)), 0
		r.SetSlot(head, s)
		head = r.Next(head)
		n++
	}
	r.SetHeadCur(head, head)
	return n
}

// queueChain writes one frame as a MOREFRAG chain of the given fragments.
func (u *user) queueChain(frags ...[]byte) {
	r := u.tx
	head := r.Head()
	require.Greater(u.t, r.Space(), uint32(len(frags)))
	for i, f := range frags {
		s := r.Slot(head)
		copy(r.Buf(s.BufIdx), f)
		s.Len, s.Flags = uint16(len(f)), 0
		if i < len(frags)-1 {
			s.Flags = netmap.NSMoreFrag
		}
		r.SetSlot(head, s)
		head = r.Next(head)
	}
	r.SetHeadCur(head, head)
}

func (u *user) send(frames ...[]byte) {
	u.t.Helper()
	require.Equal(u.t, len(frames), u.queue(frames...), "tx ring full")
	require.NoError(u.t, u.p.TxSync(0))
}

type rxSlot struct {
	data  []byte
	flags uint16
}

// recvSlots syncs the RX ring and consumes every slot.
func (u *user) recvSlots() []rxSlot {
	u.t.Helper()
	require.NoError(u.t, u.p.RxSync(0))
	r := u.rx
	var out []rxSlot
	h := r.Head()
	for ; h != r.Tail(); h = r.Next(h) {
		s := r.Slot(h)
		out = append(out, rxSlot{append([]byte(nil), r.Buf(s.BufIdx)[:s.Len]...), s.Flags})
	}
	r.SetHeadCur(h, h)
	require.NoError(u.t, u.p.RxSync(0))
	return out
}

// recv returns the frames received (fragments joined).
func (u *user) recv() [][]byte {
	var out [][]byte
	var cur []byte
	for _, s := range u.recvSlots() {
		cur = append(cur, s.data...)
		if s.flags&netmap.NSMoreFrag == 0 {
			out = append(out, cur)
			cur = nil
		}
	}
	require.Nil(u.t, cur, "unfinished chain delivered")
	return out
}

func tags(frames [][]byte) []uint32 {
	var out []uint32
	for _, f := range frames {
		out = append(out, binary.BigEndian.Uint32(f[14:]))
	}
	return out
}

// newPorts makes a switch with n small ports.
func newPorts(t testing.TB, n, slots int) (*Switch, []*Port, []*user) {
	s, err := New("vale0")
	require.NoError(t, err)
	var ps []*Port
	var us []*user
	for i := 0; i < n; i++ {
		p, err := s.NewPort(string(rune('a'+i)), netmap.PortConfig{TxSlots: slots, RxSlots: slots})
		require.NoError(t, err)
		t.Cleanup(func() { p.Detach() })
		ps = append(ps, p)
		us = append(us, newUser(t, p))
	}
	return s, ps, us
}

func runtimeGosched() { runtime.Gosched() }
