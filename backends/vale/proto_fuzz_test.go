package vale

import (
	"bytes"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

func seedRequests() []Request {
	return []Request{
		HelloReq{Version: 1},
		AttachReq{Name: "vale0:vm1@conf:rings=2", TxRings: 1, RxRings: 1, TxSlots: 256, RxSlots: 256},
		AttachReq{Name: "pipe0}1"},
		StartReq{Port: 1, Rings: 2, AtokOff: 0, KtoaOff: 4096, Mode: LoopAdaptive, SpinUs: 50},
		MoveCSBReq{Port: 1, AtokOff: 8192, KtoaOff: 12288},
		StopReq(1), DetachReq(2), ListReq{Start: 3},
		TapAttachReq("vale0", "tap0"), TapDetachReq("vale1", "t"),
		CaptureReq{Name: "vale0:vm1", Dir: 3, SnapLen: 128}, CaptureStopReq{ID: 1},
	}
}

// FuzzParseRequest: any payload, type and descriptor count either decodes to a
// request whose encoding is the payload itself (one canonical form), or is refused
// with ErrProto; never a panic.
func FuzzParseRequest(f *testing.F) {
	for _, r := range seedRequests() {
		f.Add(uint32(r.Type()), r.Encode(), uint8(r.FDs()))
	}
	f.Add(uint32(99), []byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, typ uint32, p []byte, nfds uint8) {
		r, err := ParseRequest(MsgType(typ), p, int(nfds))
		if err != nil {
			require.ErrorIs(t, err, ErrProto)
			return
		}
		require.Equal(t, MsgType(typ), r.Type())
		require.Equal(t, int(nfds), r.FDs())
		require.Equal(t, p, r.Encode(), "canonical encoding")
	})
}

// FuzzParseMessage: a packet either splits into header and payload that encode
// back to the same bytes, or is refused.
func FuzzParseMessage(f *testing.F) {
	f.Add(AppendMessage(nil, MsgList, 0, 7, ListReq{}.Encode()))
	f.Add(AppendMessage(nil, MsgAttach, FlagReply, 1, AttachReply{Port: 1}.Encode()))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		h, p, err := ParseMessage(pkt)
		if err != nil {
			require.ErrorIs(t, err, ErrProto)
			return
		}
		require.Equal(t, pkt, AppendMessage(nil, h.Type, h.Flags, h.Seq, p))
	})
}

// FuzzParseReplies: what a client decodes from the service (its geometry is then
// used to map memory) never panics, and what decodes is within the netmap limits.
func FuzzParseReplies(f *testing.F) {
	f.Add(AttachReply{Port: 1, Nifp: 0, MapSize: 1 << 20, TxRings: 1, RxRings: 1, TxSlots: 64, RxSlots: 64,
		Pools: netmap.PoolsInfo{MemSize: 1 << 19, MemID: 2}}.Encode())
	f.Add(ListReply{Total: 1, Next: 1, Entries: []ListEntry{{Kind: 1, Switch: "vale0", Name: "a", RxFrames: 3}}}.Encode())
	f.Add(ErrorReply{Errno: 2, Msg: "no"}.Encode())
	f.Add(CaptureStopReply{Packets: 1}.Encode())
	f.Fuzz(func(t *testing.T, p []byte) {
		if r, err := ParseAttachReply(p); err == nil {
			require.LessOrEqual(t, r.Pools.MemSize, r.MapSize)
			require.Less(t, r.Nifp, r.Pools.MemSize)
			require.Equal(t, p, r.Encode())
		}
		if r, err := ParseListReply(p); err == nil {
			require.LessOrEqual(t, r.Next, r.Total)
			require.LessOrEqual(t, len(r.Entries), maxListPage)
		}
		if r, err := ParseErrorReply(p); err == nil {
			require.LessOrEqual(t, len(r.Msg), 3*maxErrorMsg)
		}
		_, _ = ParseHelloReply(p)
		_, _ = ParseCaptureReply(p)
		_, _ = ParseCaptureStopReply(p)
	})
}

// FuzzServiceRequest feeds packets (no descriptors) to a live connection of a
// service: each gets exactly one reply, never a panic, and the connection keeps
// serving.
func FuzzServiceRequest(f *testing.F) {
	for _, r := range seedRequests() {
		if r.FDs() == 0 {
			f.Add(AppendMessage(nil, r.Type(), 0, 1, r.Encode()))
		}
	}
	f.Add([]byte("garbage"))
	s := &Service{reg: NewRegistry(), pid: uint32(os.Getpid()), conns: map[*svcConn]struct{}{},
		owned: map[*netmap.Port]*svcPort{}, taps: map[*Port]*svcTap{},
		cfg: ServiceConfig{OpenTap: nil, Logf: func(string, ...any) {}}}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	require.NoError(f, err)
	conn := func(fd int) *net.UnixConn {
		fc, err := net.FileConn(os.NewFile(uintptr(fd), "sp"))
		require.NoError(f, err)
		return fc.(*net.UnixConn)
	}
	svcSide, peer := conn(fds[0]), conn(fds[1])
	defer svcSide.Close()
	defer peer.Close()
	sc := &svcConn{s: s, c: svcSide, ports: map[uint32]*svcPort{}, captures: map[uint32]*captureSink{}}
	defer sc.teardown()
	buf, oob := make([]byte, HeaderSize+MaxPayload+1), make([]byte, unix.CmsgSpace(4*MaxFDs))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) > HeaderSize+MaxPayload {
			return
		}
		var seq uint32 // echoed even from a header that does not parse
		if len(pkt) >= HeaderSize {
			seq = pe.Uint32(pkt[12:])
			if MsgType(pe.Uint32(pkt)) == MsgTapAttach {
				return // would create a host interface
			}
		}
		sc.handle(append([]byte(nil), pkt...), nil)
		require.NoError(t, peer.SetReadDeadline(time.Now().Add(5*time.Second)))
		rp, rfds, err := recvMsg(peer, buf, oob)
		require.NoError(t, err)
		closeFDs(rfds)
		h, _, err := ParseMessage(rp)
		require.NoError(t, err)
		require.NotZero(t, h.Flags&FlagReply)
		require.Equal(t, seq, h.Seq)
		require.True(t, bytes.Equal(rp[:4], pkt[:min(4, len(pkt))]) || h.Flags&FlagError != 0)
		if len(sc.ports) >= MaxPortsPerConn {
			for _, p := range sc.ports {
				_ = sc.detach(p)
			}
		}
	})
}
