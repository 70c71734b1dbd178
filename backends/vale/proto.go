package vale

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// The switch service protocol: see the package documentation ("The switch
// service") for every message and its reply. Everything here is pure encoding and
// validation, shared by the service and its clients, and is what the fuzz target
// drives: a peer's bytes are decoded field by field into locals, never cast.

// ProtoVersion is the protocol version carried in every header's flags.
const ProtoVersion = 1

// Header layout: u32 type, u32 flags, u32 size (payload bytes), u32 seq.
const (
	HeaderSize = 16
	// MaxPayload bounds a message's payload (a LIST page fits in it).
	MaxPayload = 60 << 10
	// MaxFDs bounds the descriptors of one message: START's two CSB memfds plus a
	// kick and an interrupt eventfd per ring.
	MaxFDs = 2 + 2*netmap.MaxCSBRings

	flagVersionMask = 0x7
	// FlagError marks a reply that carries an ErrorReply payload.
	FlagError = 0x8
	// FlagReply marks a reply (the type and seq echo the request's).
	FlagReply  = 0x10
	flagsKnown = flagVersionMask | FlagError | FlagReply
)

// MsgType is a request type (a reply echoes it).
type MsgType uint32

// Requests. Each gets one reply with the same type and seq.
const (
	MsgHello        MsgType = 1  // HelloReq -> HelloReply
	MsgAttach       MsgType = 2  // AttachReq -> AttachReply + the region memfd
	MsgStart        MsgType = 3  // StartReq + 2 CSB memfds, n kicks, n irqs -> empty
	MsgMoveCSB      MsgType = 4  // MoveCSBReq + 2 CSB memfds -> empty
	MsgStop         MsgType = 5  // PortReq -> empty
	MsgDetach       MsgType = 6  // PortReq -> empty
	MsgList         MsgType = 7  // ListReq -> ListReply
	MsgTapAttach    MsgType = 8  // TapReq -> empty
	MsgTapDetach    MsgType = 9  // TapReq -> empty
	MsgCaptureStart MsgType = 10 // CaptureReq + 1 writable file -> CaptureReply
	MsgCaptureStop  MsgType = 11 // CaptureStopReq -> CaptureStopReply
	msgLast                 = MsgCaptureStop
)

var msgNames = [...]string{"", "HELLO", "ATTACH", "START", "MOVE_CSB", "STOP", "DETACH", "LIST",
	"TAP_ATTACH", "TAP_DETACH", "CAPTURE_START", "CAPTURE_STOP"}

func (t MsgType) String() string {
	if t >= 1 && t <= msgLast {
		return msgNames[t]
	}
	return fmt.Sprintf("msg(%d)", uint32(t))
}

// Field sizes.
const (
	NameSize       = 64 // a port name field ("valeX:Y[@conf:...]", NUL padded)
	SwitchNameSize = netmap.IfNameSize
	TapNameSize    = 16
	maxErrorMsg    = 1024
	// ListEntrySize is the encoded size of one ListEntry.
	ListEntrySize = 8 + SwitchNameSize + NameSize + 8*listCounters
	listCounters  = 12
)

// ErrProto is wrapped by every decoding error: a malformed message.
var ErrProto = errors.New("malformed message")

// Header is a decoded message header.
type Header struct {
	Type  MsgType
	Flags uint32
	Size  uint32
	Seq   uint32
}

// Version is the protocol version in the flags.
func (h Header) Version() uint32 { return h.Flags & flagVersionMask }

func protoErr(format string, a ...any) error {
	return fmt.Errorf("vale: proto: "+format+": %w", append(a, ErrProto)...)
}

// ParseMessage splits a received packet into its header and payload: the packet
// must be exactly HeaderSize+Size bytes, carry version ProtoVersion and no unknown
// flag bit. The type is not checked here (an unknown type gets its own error reply).
func ParseMessage(b []byte) (Header, []byte, error) {
	if len(b) < HeaderSize {
		return Header{}, nil, protoErr("%d bytes, shorter than the %d-byte header", len(b), HeaderSize)
	}
	h := Header{Type: MsgType(pe.Uint32(b[0:])), Flags: pe.Uint32(b[4:]), Size: pe.Uint32(b[8:]), Seq: pe.Uint32(b[12:])}
	switch {
	case h.Flags&^flagsKnown != 0:
		return h, nil, protoErr("unknown flags %#x", h.Flags&^flagsKnown)
	case h.Version() != ProtoVersion:
		return h, nil, protoErr("version %d, this side speaks %d", h.Version(), ProtoVersion)
	case h.Size > MaxPayload:
		return h, nil, protoErr("payload of %d bytes above %d", h.Size, MaxPayload)
	case uint64(h.Size) != uint64(len(b)-HeaderSize):
		return h, nil, protoErr("header says %d payload bytes, the packet has %d", h.Size, len(b)-HeaderSize)
	}
	return h, b[HeaderSize:], nil
}

// AppendMessage appends a header and payload to dst.
func AppendMessage(dst []byte, t MsgType, flags, seq uint32, payload []byte) []byte {
	var h [HeaderSize]byte
	pe.PutUint32(h[0:], uint32(t))
	pe.PutUint32(h[4:], flags&^flagVersionMask|ProtoVersion)
	pe.PutUint32(h[8:], uint32(len(payload)))
	pe.PutUint32(h[12:], seq)
	return append(append(dst, h[:]...), payload...)
}

// putName writes s NUL padded into b (len(b) bytes, s must leave room for a NUL).
func putName(b []byte, s string) {
	clear(b)
	copy(b[:len(b)-1], s)
}

// getName reads a NUL-terminated, NUL-padded name field: printable ASCII, not empty
// unless allowEmpty, nothing but NULs after the terminator.
func getName(b []byte, what string, allowEmpty bool) (string, error) {
	n := 0
	for n < len(b) && b[n] != 0 {
		c := b[n]
		if c <= ' ' || c >= 0x7f {
			return "", protoErr("%s: byte %#x at %d is not printable ASCII", what, c, n)
		}
		n++
	}
	if n == len(b) {
		return "", protoErr("%s: no NUL terminator in %d bytes", what, len(b))
	}
	for _, c := range b[n:] {
		if c != 0 {
			return "", protoErr("%s: bytes after the terminator", what)
		}
	}
	if n == 0 && !allowEmpty {
		return "", protoErr("%s: empty", what)
	}
	return string(b[:n]), nil
}

func checkLen(t MsgType, p []byte, want int) error {
	if len(p) != want {
		return protoErr("%v: payload of %d bytes, want %d", t, len(p), want)
	}
	return nil
}

func checkFDs(t MsgType, got, want int) error {
	if got != want {
		return protoErr("%v: %d file descriptors, want %d", t, got, want)
	}
	return nil
}

func zeroPad(t MsgType, b []byte) error {
	for _, c := range b {
		if c != 0 {
			return protoErr("%v: reserved bytes not zero", t)
		}
	}
	return nil
}

// Request is a decoded request. Encode gives its payload; FDs how many descriptors
// travel with it.
type Request interface {
	Type() MsgType
	Encode() []byte
	FDs() int
}

// HelloReq opens a session: the client's protocol version (also in the header).
type HelloReq struct{ Version uint32 }

// HelloReply: the service's version and process id.
type HelloReply struct{ Version, PID uint32 }

// AttachReq asks for a port: Name is "valeX:Y" (a switch port; the switch is created
// on first use) or "name{N" / "name}N" (a pipe end), with netmap's "@conf:" options;
// non-zero ring and slot counts apply where the name gives none.
type AttachReq struct {
	Name                               string
	TxRings, RxRings, TxSlots, RxSlots uint32
}

// AttachReply describes the port's region (sent with its memfd) and geometry.
type AttachReply struct {
	Port                               uint32 // handle for later requests on this connection
	Nifp                               uint64 // netmap_if offset in the region
	MapSize                            uint64 // the memfd's size (a power of two)
	TxRings, RxRings, TxSlots, RxSlots uint32
	Pools                              netmap.PoolsInfo // memsize, mem id, pool offsets and sizes
}

// StartReq starts the port's host loop over a CSB in the client's memory: atok at
// AtokOff in the first memfd, ktoa at KtoaOff in the second (the same file may come
// twice), Rings entries of 64 bytes each; then Rings kick eventfds and Rings
// interrupt eventfds, TX rings first. The service writes the CSB from the rings'
// state (ptnet's CREATE) before the loop starts.
type StartReq struct {
	Port             uint32
	Rings            uint32
	AtokOff, KtoaOff uint64
	Mode             uint32 // LoopBlock or LoopAdaptive
	SpinUs           uint32 // adaptive window, microseconds (0: default)
}

// Host loop modes in StartReq.
const (
	LoopBlock    = 0
	LoopAdaptive = 1
	maxSpinUs    = 1000
)

// MoveCSBReq moves the CSB of a port (two memfds travel with it); a running loop is
// stopped, the CSB rewritten from the rings' state and the loop restarted.
type MoveCSBReq struct {
	Port             uint32
	AtokOff, KtoaOff uint64
}

// PortReq names a port of the connection (STOP, DETACH).
type PortReq struct {
	t    MsgType
	Port uint32
}

// ListReq asks for the port listing from entry Start on.
type ListReq struct{ Start uint32 }

// Port kinds in a ListEntry.
const (
	KindSwitchPort = 1 // a switch port a client attached
	KindPipeEnd    = 2 // a pipe end a client attached
	KindTap        = 3 // a host TAP the service joined to a switch
)

// ListEntry is one port in a listing. Counters are the switch's (frames and bytes
// seen from the port, drops), the krings' (bad slots, reinits) and the host loop's.
type ListEntry struct {
	Kind        uint8
	Loop        bool   // a host loop runs
	Index       uint16 // index in the switch (0xffff: not a switch port)
	OwnerPID    uint32 // process that attached it (0: the service itself)
	Switch      string // "valeX", or "" for a pipe end
	Name        string // port name within the switch, or the pipe end's name
	RxFrames    uint64
	RxBytes     uint64
	TxFrames    uint64
	TxBytes     uint64
	Drops       uint64
	NoSpace     uint64
	BadSlots    uint64
	RingReinits uint64 // kring prologue failures (bad head/cur from the port's user)
	LoopKicks   uint64
	LoopIrqs    uint64
	LoopReinits uint64
	LoopWakeups uint64
}

// ListReply is one page of the listing: Total entries in all, Next the first entry
// of the next page (== Total when done).
type ListReply struct {
	Total, Next uint32
	Entries     []ListEntry
}

// TapReq joins (TAP_ATTACH) or removes (TAP_DETACH) host interface Tap on switch
// Switch, as vale-ctl -a / -d.
type TapReq struct {
	t           MsgType
	Switch, Tap string
}

// CaptureReq starts a pcap capture of port Name ("valeX:Y") in direction Dir
// (MonitorTX, MonitorRX or both) into the writable file that travels with it.
type CaptureReq struct {
	Name    string
	Dir     uint32
	SnapLen uint32
}

// CaptureReply names the capture for CAPTURE_STOP.
type CaptureReply struct{ ID uint32 }

// CaptureStopReq stops a capture of this connection.
type CaptureStopReq struct{ ID uint32 }

// CaptureStopReply: packets written, and frames dropped because the file did not keep up.
type CaptureStopReply struct{ Packets, Dropped uint64 }

// ErrorReply is the payload of a reply with FlagError: a Linux errno and one line.
type ErrorReply struct {
	Errno uint32
	Msg   string
}

func (HelloReq) Type() MsgType       { return MsgHello }
func (AttachReq) Type() MsgType      { return MsgAttach }
func (StartReq) Type() MsgType       { return MsgStart }
func (MoveCSBReq) Type() MsgType     { return MsgMoveCSB }
func (r PortReq) Type() MsgType      { return r.t }
func (ListReq) Type() MsgType        { return MsgList }
func (r TapReq) Type() MsgType       { return r.t }
func (CaptureReq) Type() MsgType     { return MsgCaptureStart }
func (CaptureStopReq) Type() MsgType { return MsgCaptureStop }

func (HelloReq) FDs() int       { return 0 }
func (AttachReq) FDs() int      { return 0 }
func (r StartReq) FDs() int     { return 2 + 2*int(r.Rings) }
func (MoveCSBReq) FDs() int     { return 2 }
func (PortReq) FDs() int        { return 0 }
func (ListReq) FDs() int        { return 0 }
func (TapReq) FDs() int         { return 0 }
func (CaptureReq) FDs() int     { return 1 }
func (CaptureStopReq) FDs() int { return 0 }

// StopReq, DetachReq, TapAttachReq and TapDetachReq build the shared-layout requests.
func StopReq(port uint32) PortReq   { return PortReq{t: MsgStop, Port: port} }
func DetachReq(port uint32) PortReq { return PortReq{t: MsgDetach, Port: port} }
func TapAttachReq(sw, tap string) TapReq {
	return TapReq{t: MsgTapAttach, Switch: sw, Tap: tap}
}
func TapDetachReq(sw, tap string) TapReq {
	return TapReq{t: MsgTapDetach, Switch: sw, Tap: tap}
}

var pe = binary.LittleEndian // the wire byte order

func u32s(vs ...uint32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		pe.PutUint32(b[4*i:], v)
	}
	return b
}

func (r HelloReq) Encode() []byte { return u32s(r.Version, 0) }

func (r AttachReq) Encode() []byte {
	b := make([]byte, NameSize+24)
	putName(b[:NameSize], r.Name)
	copy(b[NameSize:], u32s(r.TxRings, r.RxRings, r.TxSlots, r.RxSlots, 0, 0))
	return b
}

func (r StartReq) Encode() []byte {
	b := make([]byte, 32)
	pe.PutUint32(b[0:], r.Port)
	pe.PutUint32(b[4:], r.Rings)
	pe.PutUint64(b[8:], r.AtokOff)
	pe.PutUint64(b[16:], r.KtoaOff)
	pe.PutUint32(b[24:], r.Mode)
	pe.PutUint32(b[28:], r.SpinUs)
	return b
}

func (r MoveCSBReq) Encode() []byte {
	b := make([]byte, 24)
	pe.PutUint32(b[0:], r.Port)
	pe.PutUint64(b[8:], r.AtokOff)
	pe.PutUint64(b[16:], r.KtoaOff)
	return b
}

func (r PortReq) Encode() []byte { return u32s(r.Port, 0) }
func (r ListReq) Encode() []byte { return u32s(r.Start, 0) }

func (r TapReq) Encode() []byte {
	b := make([]byte, SwitchNameSize+TapNameSize)
	putName(b[:SwitchNameSize], r.Switch)
	putName(b[SwitchNameSize:], r.Tap)
	return b
}

func (r CaptureReq) Encode() []byte {
	b := make([]byte, NameSize+8)
	putName(b[:NameSize], r.Name)
	pe.PutUint32(b[NameSize:], r.Dir)
	pe.PutUint32(b[NameSize+4:], r.SnapLen)
	return b
}

func (r CaptureStopReq) Encode() []byte { return u32s(r.ID, 0) }

// ParseRequest decodes a request payload of type t that came with nfds descriptors.
// Lengths, descriptor counts, names, reserved bytes and value ranges are checked; a
// failure wraps ErrProto. What needs the service's state (port handles, offsets
// inside the memfds) is checked by the service.
func ParseRequest(t MsgType, p []byte, nfds int) (Request, error) {
	var r Request
	var err error
	switch t {
	case MsgHello:
		r, err = parseHello(p)
	case MsgAttach:
		r, err = parseAttach(p)
	case MsgStart:
		r, err = parseStart(p)
	case MsgMoveCSB:
		r, err = parseMoveCSB(p)
	case MsgStop, MsgDetach:
		r, err = parsePortReq(t, p)
	case MsgList:
		if err = checkLen(t, p, 8); err == nil {
			err = zeroPad(t, p[4:])
			r = ListReq{Start: pe.Uint32(p)}
		}
	case MsgTapAttach, MsgTapDetach:
		r, err = parseTap(t, p)
	case MsgCaptureStart:
		r, err = parseCapture(p)
	case MsgCaptureStop:
		if err = checkLen(t, p, 8); err == nil {
			err = zeroPad(t, p[4:])
			r = CaptureStopReq{ID: pe.Uint32(p)}
		}
	default:
		return nil, protoErr("unknown request type %d", uint32(t))
	}
	if err != nil {
		return nil, err
	}
	if err := checkFDs(t, nfds, r.FDs()); err != nil {
		return nil, err
	}
	return r, nil
}

func parseHello(p []byte) (Request, error) {
	if err := checkLen(MsgHello, p, 8); err != nil {
		return nil, err
	}
	return HelloReq{Version: pe.Uint32(p)}, zeroPad(MsgHello, p[4:])
}

func parseAttach(p []byte) (Request, error) {
	if err := checkLen(MsgAttach, p, NameSize+24); err != nil {
		return nil, err
	}
	name, err := getName(p[:NameSize], "port name", false)
	if err != nil {
		return nil, err
	}
	q := p[NameSize:]
	r := AttachReq{Name: name, TxRings: pe.Uint32(q[0:]), RxRings: pe.Uint32(q[4:]),
		TxSlots: pe.Uint32(q[8:]), RxSlots: pe.Uint32(q[12:])}
	if err := zeroPad(MsgAttach, q[16:]); err != nil {
		return nil, err
	}
	if r.TxRings > netmap.MaxRings || r.RxRings > netmap.MaxRings {
		return nil, protoErr("ATTACH: %d/%d rings, at most %d per direction", r.TxRings, r.RxRings, netmap.MaxRings)
	}
	if r.TxSlots > netmap.MaxSlots || r.RxSlots > netmap.MaxSlots {
		return nil, protoErr("ATTACH: %d/%d slots, at most %d", r.TxSlots, r.RxSlots, netmap.MaxSlots)
	}
	return r, nil
}

func parseStart(p []byte) (Request, error) {
	if err := checkLen(MsgStart, p, 32); err != nil {
		return nil, err
	}
	r := StartReq{Port: pe.Uint32(p[0:]), Rings: pe.Uint32(p[4:]), AtokOff: pe.Uint64(p[8:]),
		KtoaOff: pe.Uint64(p[16:]), Mode: pe.Uint32(p[24:]), SpinUs: pe.Uint32(p[28:])}
	switch {
	case r.Rings < 2 || r.Rings > netmap.MaxCSBRings:
		return nil, protoErr("START: %d rings, want 2..%d", r.Rings, netmap.MaxCSBRings)
	case r.Mode != LoopBlock && r.Mode != LoopAdaptive:
		return nil, protoErr("START: loop mode %d (0 block, 1 adaptive)", r.Mode)
	case r.SpinUs > maxSpinUs:
		return nil, protoErr("START: spin of %d us above %d", r.SpinUs, maxSpinUs)
	case r.AtokOff%netmap.CSBEntrySize != 0 || r.KtoaOff%netmap.CSBEntrySize != 0:
		return nil, protoErr("START: CSB offsets %#x/%#x not %d-byte aligned", r.AtokOff, r.KtoaOff, netmap.CSBEntrySize)
	}
	return r, nil
}

func parseMoveCSB(p []byte) (Request, error) {
	if err := checkLen(MsgMoveCSB, p, 24); err != nil {
		return nil, err
	}
	r := MoveCSBReq{Port: pe.Uint32(p[0:]), AtokOff: pe.Uint64(p[8:]), KtoaOff: pe.Uint64(p[16:])}
	if err := zeroPad(MsgMoveCSB, p[4:8]); err != nil {
		return nil, err
	}
	if r.AtokOff%netmap.CSBEntrySize != 0 || r.KtoaOff%netmap.CSBEntrySize != 0 {
		return nil, protoErr("MOVE_CSB: CSB offsets %#x/%#x not %d-byte aligned", r.AtokOff, r.KtoaOff, netmap.CSBEntrySize)
	}
	return r, nil
}

func parsePortReq(t MsgType, p []byte) (Request, error) {
	if err := checkLen(t, p, 8); err != nil {
		return nil, err
	}
	return PortReq{t: t, Port: pe.Uint32(p)}, zeroPad(t, p[4:])
}

func parseTap(t MsgType, p []byte) (Request, error) {
	if err := checkLen(t, p, SwitchNameSize+TapNameSize); err != nil {
		return nil, err
	}
	sw, err := getName(p[:SwitchNameSize], "switch name", false)
	if err != nil {
		return nil, err
	}
	tp, err := getName(p[SwitchNameSize:], "TAP name", false)
	if err != nil {
		return nil, err
	}
	if err := CheckSwitchName(sw); err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrProto)
	}
	if err := CheckTapName(tp); err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrProto)
	}
	return TapReq{t: t, Switch: sw, Tap: tp}, nil
}

// CheckTapName accepts a Linux interface name usable for a TAP: 1..15 bytes, no '/',
// ':', '{', '}' or whitespace, not "." or "..".
func CheckTapName(s string) error {
	if s == "" || len(s) >= TapNameSize || s == "." || s == ".." {
		return fmt.Errorf("vale: TAP name %q: 1 to %d characters", s, TapNameSize-1)
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 0x7f || c == '/' || c == ':' || c == '{' || c == '}' {
			return fmt.Errorf("vale: TAP name %q: character %q not allowed", s, c)
		}
	}
	return nil
}

func parseCapture(p []byte) (Request, error) {
	if err := checkLen(MsgCaptureStart, p, NameSize+8); err != nil {
		return nil, err
	}
	name, err := getName(p[:NameSize], "port name", false)
	if err != nil {
		return nil, err
	}
	r := CaptureReq{Name: name, Dir: pe.Uint32(p[NameSize:]), SnapLen: pe.Uint32(p[NameSize+4:])}
	if r.Dir == 0 || r.Dir&^uint32(MonitorBoth) != 0 {
		return nil, protoErr("CAPTURE_START: direction %#x (1 tx, 2 rx, 3 both)", r.Dir)
	}
	if r.SnapLen > 1<<18 {
		return nil, protoErr("CAPTURE_START: snaplen %d above %d", r.SnapLen, 1<<18)
	}
	return r, nil
}

// Replies.

func (r HelloReply) Encode() []byte { return u32s(r.Version, r.PID) }

// ParseHelloReply decodes a HELLO reply.
func ParseHelloReply(p []byte) (HelloReply, error) {
	if err := checkLen(MsgHello, p, 8); err != nil {
		return HelloReply{}, err
	}
	return HelloReply{Version: pe.Uint32(p), PID: pe.Uint32(p[4:])}, nil
}

const attachReplySize = 40 + netmap.PoolsInfoSize

// Encode writes the reply payload.
func (r AttachReply) Encode() []byte {
	b := make([]byte, attachReplySize)
	pe.PutUint32(b[0:], r.Port)
	pe.PutUint64(b[8:], r.Nifp)
	pe.PutUint64(b[16:], r.MapSize)
	copy(b[24:], u32s(r.TxRings, r.RxRings, r.TxSlots, r.RxSlots))
	r.Pools.Encode(b[40:])
	return b
}

// ParseAttachReply decodes and checks an ATTACH reply against the netmap limits: a
// client maps the region it describes, so a wrong geometry must not get that far.
func ParseAttachReply(p []byte) (AttachReply, error) {
	if err := checkLen(MsgAttach, p, attachReplySize); err != nil {
		return AttachReply{}, err
	}
	r := AttachReply{Port: pe.Uint32(p[0:]), Nifp: pe.Uint64(p[8:]), MapSize: pe.Uint64(p[16:]),
		TxRings: pe.Uint32(p[24:]), RxRings: pe.Uint32(p[28:]), TxSlots: pe.Uint32(p[32:]), RxSlots: pe.Uint32(p[36:])}
	var err error
	if r.Pools, err = netmap.DecodePoolsInfo(p[40:]); err != nil {
		return AttachReply{}, protoErr("ATTACH reply: %v", err)
	}
	ms := r.Pools.MemSize
	switch {
	case r.TxRings < 1 || r.RxRings < 1 || r.TxRings > netmap.MaxRings || r.RxRings > netmap.MaxRings:
		return r, protoErr("ATTACH reply: %d/%d rings", r.TxRings, r.RxRings)
	case r.TxSlots < netmap.MinSlots || r.RxSlots < netmap.MinSlots || r.TxSlots > netmap.MaxSlots || r.RxSlots > netmap.MaxSlots:
		return r, protoErr("ATTACH reply: %d/%d slots", r.TxSlots, r.RxSlots)
	case r.MapSize == 0 || r.MapSize&(r.MapSize-1) != 0 || r.MapSize > 1<<40:
		return r, protoErr("ATTACH reply: map size %#x is not a power of two up to 1 TiB", r.MapSize)
	case ms == 0 || ms > r.MapSize:
		return r, protoErr("ATTACH reply: region of %d bytes in a %d-byte map", ms, r.MapSize)
	case r.Nifp >= ms || r.Nifp%8 != 0:
		return r, protoErr("ATTACH reply: netmap_if at %#x outside the %d-byte region", r.Nifp, ms)
	case r.Pools.MemID < 2:
		return r, protoErr("ATTACH reply: mem id %d", r.Pools.MemID)
	}
	return r, nil
}

// Encode writes the reply payload.
func (r ListReply) Encode() []byte {
	b := make([]byte, 16, 16+len(r.Entries)*ListEntrySize)
	pe.PutUint32(b[0:], r.Total)
	pe.PutUint32(b[4:], r.Next)
	pe.PutUint32(b[8:], uint32(len(r.Entries)))
	for _, e := range r.Entries {
		b = e.appendTo(b)
	}
	return b
}

func (e ListEntry) counters() [listCounters]uint64 {
	return [listCounters]uint64{e.RxFrames, e.RxBytes, e.TxFrames, e.TxBytes, e.Drops, e.NoSpace,
		e.BadSlots, e.RingReinits, e.LoopKicks, e.LoopIrqs, e.LoopReinits, e.LoopWakeups}
}

func (e ListEntry) appendTo(b []byte) []byte {
	var x [ListEntrySize]byte
	x[0] = e.Kind
	if e.Loop {
		x[1] = 1
	}
	pe.PutUint16(x[2:], e.Index)
	pe.PutUint32(x[4:], e.OwnerPID)
	putName(x[8:8+SwitchNameSize], e.Switch)
	putName(x[8+SwitchNameSize:8+SwitchNameSize+NameSize], e.Name)
	o := 8 + SwitchNameSize + NameSize
	for i, v := range e.counters() {
		pe.PutUint64(x[o+8*i:], v)
	}
	return append(b, x[:]...)
}

// maxListPage is how many entries fit one reply.
const maxListPage = (MaxPayload - 16) / ListEntrySize

// ParseListReply decodes a LIST reply.
func ParseListReply(p []byte) (ListReply, error) {
	if len(p) < 16 {
		return ListReply{}, protoErr("LIST reply: %d bytes", len(p))
	}
	r := ListReply{Total: pe.Uint32(p[0:]), Next: pe.Uint32(p[4:])}
	n := pe.Uint32(p[8:])
	if n > maxListPage || uint64(len(p)) != 16+uint64(n)*ListEntrySize {
		return ListReply{}, protoErr("LIST reply: %d entries in %d bytes", n, len(p))
	}
	if r.Next > r.Total {
		return ListReply{}, protoErr("LIST reply: next %d beyond total %d", r.Next, r.Total)
	}
	for i := uint32(0); i < n; i++ {
		x := p[16+i*ListEntrySize:][:ListEntrySize]
		e := ListEntry{Kind: x[0], Loop: x[1] != 0, Index: pe.Uint16(x[2:]), OwnerPID: pe.Uint32(x[4:])}
		var err error
		if e.Switch, err = getName(x[8:8+SwitchNameSize], "switch name", true); err != nil {
			return ListReply{}, err
		}
		if e.Name, err = getName(x[8+SwitchNameSize:8+SwitchNameSize+NameSize], "port name", false); err != nil {
			return ListReply{}, err
		}
		o := 8 + SwitchNameSize + NameSize
		c := func(i int) uint64 { return pe.Uint64(x[o+8*i:]) }
		e.RxFrames, e.RxBytes, e.TxFrames, e.TxBytes = c(0), c(1), c(2), c(3)
		e.Drops, e.NoSpace, e.BadSlots, e.RingReinits = c(4), c(5), c(6), c(7)
		e.LoopKicks, e.LoopIrqs, e.LoopReinits, e.LoopWakeups = c(8), c(9), c(10), c(11)
		r.Entries = append(r.Entries, e)
	}
	return r, nil
}

func (r CaptureReply) Encode() []byte { return u32s(r.ID, 0) }

// ParseCaptureReply decodes a CAPTURE_START reply.
func ParseCaptureReply(p []byte) (CaptureReply, error) {
	if err := checkLen(MsgCaptureStart, p, 8); err != nil {
		return CaptureReply{}, err
	}
	return CaptureReply{ID: pe.Uint32(p)}, nil
}

// Encode writes the reply payload.
func (r CaptureStopReply) Encode() []byte {
	b := make([]byte, 16)
	pe.PutUint64(b[0:], r.Packets)
	pe.PutUint64(b[8:], r.Dropped)
	return b
}

// ParseCaptureStopReply decodes a CAPTURE_STOP reply.
func ParseCaptureStopReply(p []byte) (CaptureStopReply, error) {
	if err := checkLen(MsgCaptureStop, p, 16); err != nil {
		return CaptureStopReply{}, err
	}
	return CaptureStopReply{Packets: pe.Uint64(p), Dropped: pe.Uint64(p[8:])}, nil
}

// Encode writes the reply payload; the message is cut to 1 KiB.
func (r ErrorReply) Encode() []byte {
	msg := r.Msg
	if len(msg) > maxErrorMsg {
		msg = msg[:maxErrorMsg]
	}
	b := make([]byte, 8, 8+len(msg))
	pe.PutUint32(b, r.Errno)
	return append(b, msg...)
}

// ParseErrorReply decodes an error reply; the message is taken as text (invalid
// UTF-8 replaced), whatever the peer sent.
func ParseErrorReply(p []byte) (ErrorReply, error) {
	if len(p) < 8 || len(p) > 8+maxErrorMsg {
		return ErrorReply{}, protoErr("error reply of %d bytes", len(p))
	}
	msg := p[8:]
	s := string(msg)
	if !utf8.Valid(msg) {
		s = string([]rune(s))
	}
	return ErrorReply{Errno: pe.Uint32(p), Msg: s}, nil
}
