package vale

import (
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/notify"
)

// rawConn is a client that writes whatever bytes and descriptors a test wants.
type rawConn struct {
	t        *testing.T
	c        *net.UnixConn
	buf, oob []byte
}

func rawDial(t *testing.T, path string) *rawConn {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, buf: make([]byte, HeaderSize+MaxPayload+1), oob: make([]byte, unix.CmsgSpace(4*MaxFDs))}
}

func (r *rawConn) send(pkt []byte, fds ...int) {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := r.c.WriteMsgUnix(pkt, oob, nil)
	require.NoError(r.t, err)
}

// reply reads one reply; for an error reply it returns the errno (0 otherwise).
func (r *rawConn) reply() (Header, []byte, unix.Errno, []int) {
	require.NoError(r.t, r.c.SetReadDeadline(time.Now().Add(5*time.Second)))
	pkt, fds, err := recvMsg(r.c, r.buf, r.oob)
	require.NoError(r.t, err)
	h, p, err := ParseMessage(pkt)
	require.NoError(r.t, err)
	require.NotZero(r.t, h.Flags&FlagReply)
	if h.Flags&FlagError != 0 {
		e, err := ParseErrorReply(p)
		require.NoError(r.t, err)
		r.t.Logf("%v seq %d: errno %v: %s", h.Type, h.Seq, unix.Errno(e.Errno), e.Msg)
		return h, p, unix.Errno(e.Errno), fds
	}
	return h, p, 0, fds
}

func (r *rawConn) req(t MsgType, seq uint32, payload []byte, fds ...int) (Header, []byte, unix.Errno, []int) {
	r.send(AppendMessage(nil, t, 0, seq, payload), fds...)
	return r.reply()
}

func mustMemfd(t *testing.T, size int, seal bool) int {
	flags := unix.MFD_CLOEXEC
	if seal {
		flags |= unix.MFD_ALLOW_SEALING
	}
	fd, err := unix.MemfdCreate("test", flags)
	require.NoError(t, err)
	require.NoError(t, unix.Ftruncate(fd, int64(size)))
	if seal {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
		require.NoError(t, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func mustEventFDs(t *testing.T, n int) []int {
	var out []int
	for i := 0; i < n; i++ {
		e, err := notify.NewEventFD()
		require.NoError(t, err)
		t.Cleanup(func() { e.Close() })
		out = append(out, e.FD())
	}
	return out
}

// Every malformed request gets an error reply with the right errno and the
// connection, and the service, keep serving; every descriptor sent along is
// closed by the service.
func TestServiceRefusesMalformedRequests(t *testing.T) {
	s := startService(t, ServiceConfig{})
	r := rawDial(t, s.Path())

	// A port to aim START at: 1 TX + 1 RX ring.
	h, p, errno, fds := r.req(MsgAttach, 1, AttachReq{Name: "vale0:v", TxSlots: 64, RxSlots: 64}.Encode())
	require.Zero(t, errno)
	require.Len(t, fds, 1)
	unix.Close(fds[0])
	ar, err := ParseAttachReply(p)
	require.NoError(t, err)
	require.Equal(t, uint32(1), h.Seq)
	port := ar.Port

	good := mustMemfd(t, 8192, true)
	unsealed := mustMemfd(t, 8192, false)
	pipeFDs := make([]int, 2)
	require.NoError(t, unix.Pipe2(pipeFDs, unix.O_CLOEXEC))
	t.Cleanup(func() { unix.Close(pipeFDs[0]); unix.Close(pipeFDs[1]) })
	evs := mustEventFDs(t, 4)
	start := func(rings uint32, atok, ktoa uint64) []byte {
		return StartReq{Port: port, Rings: rings, AtokOff: atok, KtoaOff: ktoa}.Encode()
	}
	withFDs := func(a, k int, ev ...int) []int { return append([]int{a, k}, ev...) }

	fds0 := len(openFDs(t))

	badName := AttachReq{Name: "vale0:x"}.Encode()
	badName[3] = 0x01
	noNUL := AttachReq{Name: "vale0:x"}.Encode()
	for i := 0; i < NameSize; i++ {
		noNUL[i] = 'a'
	}
	afterNUL := AttachReq{Name: "vale0:x"}.Encode()
	afterNUL[40] = 'z'

	cases := []struct {
		name    string
		t       MsgType
		payload []byte
		fds     []int
		errno   unix.Errno
	}{
		{"unknown type", 99, nil, nil, unix.EINVAL},
		{"type zero", 0, nil, nil, unix.EINVAL},
		{"short attach", MsgAttach, make([]byte, 10), nil, unix.EINVAL},
		{"long list", MsgList, make([]byte, 9), nil, unix.EINVAL},
		{"list with a descriptor", MsgList, ListReq{}.Encode(), []int{good}, unix.EINVAL},
		{"name not printable", MsgAttach, badName, nil, unix.EINVAL},
		{"name without NUL", MsgAttach, noNUL, nil, unix.EINVAL},
		{"bytes after NUL", MsgAttach, afterNUL, nil, unix.EINVAL},
		{"name that does not parse", MsgAttach, AttachReq{Name: "vale0:a@conf:rings=x"}.Encode(), nil, unix.EINVAL},
		{"not a switch or pipe", MsgAttach, AttachReq{Name: "netmap:eth0"}.Encode(), nil, unix.EINVAL},
		{"too many rings", MsgAttach, AttachReq{Name: "vale0:r", TxRings: 17}.Encode(), nil, unix.EINVAL},
		{"reserved bytes", MsgStop, []byte{1, 0, 0, 0, 1, 0, 0, 0}, nil, unix.EINVAL},
		{"stop unknown port", MsgStop, StopReq(77).Encode(), nil, unix.ENOENT},
		{"start unknown port", MsgStart, StartReq{Port: 77, Rings: 2}.Encode(), withFDs(good, good, evs...), unix.ENOENT},
		{"start wrong ring count", MsgStart, start(3, 0, 4096), withFDs(good, good, append(evs, evs[0], evs[1])...), unix.EINVAL},
		{"start too few descriptors", MsgStart, start(2, 0, 4096), withFDs(good, good, evs[:3]...), unix.EINVAL},
		{"start offset past the memfd", MsgStart, start(2, 0, 8192-64), withFDs(good, good, evs...), unix.EFAULT},
		{"start offset wraps", MsgStart, start(2, 0, ^uint64(0)&^63), withFDs(good, good, evs...), unix.EFAULT},
		{"start misaligned", MsgStart, start(2, 8, 4096), withFDs(good, good, evs...), unix.EINVAL},
		{"start overlapping arrays", MsgStart, start(2, 0, 64), withFDs(good, good, evs...), unix.EINVAL},
		{"start unsealed memfd", MsgStart, start(2, 0, 4096), withFDs(unsealed, unsealed, evs...), unix.EPERM},
		{"start CSB in a pipe", MsgStart, start(2, 0, 4096), withFDs(pipeFDs[1], pipeFDs[1], evs...), unix.EINVAL},
		{"start kicks not eventfds", MsgStart, start(2, 0, 4096), withFDs(good, good, good, good, evs[0], evs[1]), unix.EINVAL},
		{"start bad mode", MsgStart, StartReq{Port: port, Rings: 2, AtokOff: 0, KtoaOff: 4096, Mode: 7}.Encode(), withFDs(good, good, evs...), unix.EINVAL},
		{"move without a loop", MsgMoveCSB, MoveCSBReq{Port: port, KtoaOff: 4096}.Encode(), []int{good, good}, unix.ENXIO},
		{"capture without a file", MsgCaptureStart, CaptureReq{Name: "vale0:v", Dir: 3}.Encode(), nil, unix.EINVAL},
		{"capture of a pipe", MsgCaptureStart, CaptureReq{Name: "vale0:v", Dir: 3}.Encode(), []int{pipeFDs[0]}, unix.EBADF},
		{"capture bad direction", MsgCaptureStart, CaptureReq{Name: "vale0:v", Dir: 4}.Encode(), []int{good}, unix.EINVAL},
		{"tap bad switch", MsgTapAttach, TapAttachReq("sw0", "tap0").Encode(), nil, unix.EINVAL},
		{"tap bad name", MsgTapAttach, TapAttachReq("vale0", "a/b").Encode(), nil, unix.EINVAL},
		{"hello other version", MsgHello, HelloReq{Version: 9}.Encode(), nil, unix.EPROTO},
	}
	for i, c := range cases {
		seq := uint32(100 + i)
		h, _, errno, fds := r.req(c.t, seq, c.payload, c.fds...)
		require.Empty(t, fds, c.name)
		require.Equal(t, c.errno, errno, c.name)
		require.Equal(t, seq, h.Seq, c.name)
	}

	// Header-level damage: wrong version, unknown flag, a size that lies, a
	// request flagged as a reply.
	hdr := func(t MsgType, flags, size, seq uint32, extra int) []byte {
		b := make([]byte, HeaderSize+extra)
		binary.LittleEndian.PutUint32(b[0:], uint32(t))
		binary.LittleEndian.PutUint32(b[4:], flags)
		binary.LittleEndian.PutUint32(b[8:], size)
		binary.LittleEndian.PutUint32(b[12:], seq)
		return b
	}
	for _, pkt := range [][]byte{
		hdr(MsgList, 2, 8, 5, 8),
		hdr(MsgList, 1|0x100, 8, 5, 8),
		hdr(MsgList, 1, 100, 5, 8),
		hdr(MsgList, 1|FlagReply, 8, 5, 8),
		{1, 2, 3},
	} {
		r.send(pkt)
		_, _, errno, _ := r.reply()
		require.Equal(t, unix.EINVAL, errno)
	}
	// A packet larger than any message, and more descriptors than any message.
	r.send(make([]byte, HeaderSize+MaxPayload+100))
	h, _, errno, _ = r.reply()
	require.Equal(t, unix.EMSGSIZE, errno)
	require.Zero(t, h.Seq)
	many := make([]int, 200)
	for i := range many {
		many[i] = good
	}
	r.send(AppendMessage(nil, MsgList, 0, 9, ListReq{}.Encode()), many...)
	_, _, errno, _ = r.reply()
	require.Equal(t, unix.EMSGSIZE, errno)

	// Still serving this connection and others.
	_, p, errno, _ = r.req(MsgHello, 2, HelloReq{Version: ProtoVersion}.Encode())
	require.Zero(t, errno)
	hr, err := ParseHelloReply(p)
	require.NoError(t, err)
	require.Equal(t, uint32(ProtoVersion), hr.Version)
	c := dial(t, s.Path())
	es, err := c.List()
	require.NoError(t, err)
	require.NotNil(t, findEntry(es, "vale0", "v"))
	require.Zero(t, s.Stats().Loops, "no START succeeded")
	// Every descriptor sent in those requests was closed by the service: only
	// the new client's socket is open now.
	require.Equal(t, fds0+2, len(openFDs(t)), "client socket plus its service side")
}

// A client must not be able to resize the region memfd it is given: the service
// maps the same file, and a truncated file makes the service fault. The service
// seals it when netmap created it sealable; until backends/netmap creates its
// memfds with MFD_ALLOW_SEALING this is a known gap, and the test says so.
func TestServiceRegionSealed(t *testing.T) {
	s := startService(t, ServiceConfig{})
	c := dial(t, s.Path())
	rp, err := c.Attach("vale0:s", netmap.PortConfig{TxSlots: 32, RxSlots: 32})
	require.NoError(t, err)
	defer rp.Detach()
	seals, err := unix.FcntlInt(uintptr(rp.FD()), unix.F_GET_SEALS, 0)
	require.NoError(t, err)
	require.NotZero(t, seals&unix.F_SEAL_SHRINK, "region memfd sealed against shrinking")
	require.Error(t, unix.Ftruncate(rp.FD(), 4096), "a client cannot shrink the region")
}
