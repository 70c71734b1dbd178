package pktgen

import (
	"encoding/binary"
	"errors"
)

// Frame layout (after the optional virtio-net header): an Ethernet header
// with EtherType 0x88b5 (IEEE local experimental), then
//
//	14 magic "ptvg" | 18 kind u16 | 20 reserved u16 | 22 seq u64 | 30 stamp u64
//
// little-endian, and zero padding up to the frame size.
const (
	EtherType    = 0x88b5
	MinFrameSize = 60 // the Ethernet minimum without FCS
	MaxFrameSize = 65535
	hdrEnd       = 38
	offMagic     = 14
	offKind      = 18
	offSeq       = 22
	offStamp     = 30
)

var magic = [4]byte{'p', 't', 'v', 'g'}

// Kind says what a pktgen frame is for.
type Kind uint16

const (
	KindData Kind = 1 // tx -> rx
	KindPing Kind = 2 // ping -> pong
	KindPong Kind = 3 // pong -> ping
	KindAck  Kind = 4 // rx -> tx: how far rx got (Config.Ack)
)

// Broadcast is the default destination: a switch floods it to every port.
var Broadcast = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// DefaultSrc is a locally administered unicast address.
var DefaultSrc = [6]byte{0x02, 0x70, 0x74, 0x76, 0x67, 0x01}

// Template builds a frame of size bytes (plus hdrLen zero bytes of
// virtio-net header in front) of kind with sequence 0.
func Template(size, hdrLen int, dst, src [6]byte, kind Kind) []byte {
	f := make([]byte, hdrLen+size)
	e := f[hdrLen:]
	copy(e[0:6], dst[:])
	copy(e[6:12], src[:])
	binary.BigEndian.PutUint16(e[12:], EtherType)
	copy(e[offMagic:], magic[:])
	binary.LittleEndian.PutUint16(e[offKind:], uint16(kind))
	return f
}

// Stamp writes the sequence number and time stamp into a frame made by
// Template (e starts at the Ethernet header).
func Stamp(e []byte, seq, stamp uint64) {
	binary.LittleEndian.PutUint64(e[offSeq:], seq)
	binary.LittleEndian.PutUint64(e[offStamp:], stamp)
}

// Header is what Parse reads from a pktgen frame.
type Header struct {
	Dst, Src [6]byte
	Kind     Kind
	Seq      uint64
	Stamp    uint64
}

// ErrNotPktgen says a frame is not one pktgen sent (too short, other
// EtherType or magic).
var ErrNotPktgen = errors.New("pktgen: not a pktgen frame")

// Parse reads the pktgen header of e (starting at the Ethernet header). e
// comes from a peer: every length is checked.
func Parse(e []byte) (Header, error) {
	if len(e) < hdrEnd || binary.BigEndian.Uint16(e[12:]) != EtherType || [4]byte(e[offMagic:offMagic+4]) != magic {
		return Header{}, ErrNotPktgen
	}
	h := Header{
		Kind:  Kind(binary.LittleEndian.Uint16(e[offKind:])),
		Seq:   binary.LittleEndian.Uint64(e[offSeq:]),
		Stamp: binary.LittleEndian.Uint64(e[offStamp:]),
	}
	copy(h.Dst[:], e[0:6])
	copy(h.Src[:], e[6:12])
	return h, nil
}

// seqTracker counts frames lost and out of order in one sequence stream. A
// frame older than the newest one seen is taken for a late one (a duplicate
// too): it leaves the lost count and joins the out-of-order count.
type seqTracker struct {
	next      uint64
	started   bool
	lost, ooo uint64
}

func (s *seqTracker) see(seq uint64) {
	switch {
	case !s.started || seq == s.next:
		if !s.started && seq > 0 {
			s.lost += seq // frames before the first one seen
		}
		s.started = true
		s.next = seq + 1
	case seq > s.next:
		s.lost += seq - s.next
		s.next = seq + 1
	default: // late or duplicated: it was counted as lost when skipped
		s.ooo++
		if s.lost > 0 {
			s.lost--
		}
	}
}
