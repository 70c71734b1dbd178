package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"
)

// ICMP types and the IPv4 protocol number the ping built-in uses.
const (
	icmpEchoReply   = 0
	icmpEchoRequest = 8
	protoICMP       = 1
	icmpHdrLen      = 8
)

// checksum is the Internet checksum (RFC 1071) of b: the ones' complement
// of the ones' complement sum of its 16-bit big-endian words, an odd last
// byte padded with zero.
func checksum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// echoRequest is an ICMP echo request with id, seq and payload, checksummed.
func echoRequest(id, seq uint16, payload []byte) []byte {
	b := make([]byte, icmpHdrLen+len(payload))
	b[0] = icmpEchoRequest
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[icmpHdrLen:], payload)
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

// pingPayload is the n-byte payload of every request: byte i is i mod 256,
// so a reply's data can be checked without trusting any of it.
func pingPayload(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i)
	}
	return p
}

// echoReply is a parsed ICMP echo reply.
type echoReply struct {
	From    netip.Addr // the IPv4 source; invalid when the socket gave no IP header
	TTL     int        // -1 when unknown
	ID, Seq uint16
	Data    []byte // the payload, aliasing the parsed buffer
}

// errNotReply marks a well-formed packet that is not an echo reply (our own
// request looping back, an ICMP error, another protocol): skipped quietly.
var errNotReply = errors.New("not an echo reply")

// parseReply parses what an ICMP socket read returned: a whole IPv4 packet
// when ipHdr (raw socket), else the ICMP message alone (datagram socket).
// The bytes come from the network, so every length is checked before use;
// a short or inconsistent packet is an error, never a panic.
func parseReply(b []byte, ipHdr bool) (echoReply, error) {
	r := echoReply{TTL: -1}
	if ipHdr {
		if len(b) < 20 {
			return r, fmt.Errorf("IPv4 header truncated (%d bytes)", len(b))
		}
		if b[0]>>4 != 4 {
			return r, fmt.Errorf("IP version %d, not 4", b[0]>>4)
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:]))
		switch {
		case ihl < 20 || ihl > len(b):
			return r, fmt.Errorf("IPv4 header length %d in a %d-byte packet", ihl, len(b))
		case total < ihl || total > len(b):
			return r, fmt.Errorf("IPv4 total length %d in a %d-byte packet", total, len(b))
		case b[9] != protoICMP:
			return r, errNotReply
		}
		r.TTL = int(b[8])
		r.From = netip.AddrFrom4([4]byte(b[12:16]))
		b = b[ihl:total]
	}
	if len(b) < icmpHdrLen {
		return r, fmt.Errorf("ICMP message truncated (%d bytes)", len(b))
	}
	if b[0] != icmpEchoReply || b[1] != 0 {
		return r, errNotReply
	}
	if checksum(b) != 0 {
		return r, errors.New("bad ICMP checksum")
	}
	r.ID = binary.BigEndian.Uint16(b[4:])
	r.Seq = binary.BigEndian.Uint16(b[6:])
	r.Data = b[icmpHdrLen:]
	return r, nil
}

// pingStats are a ping run's counts and round-trip times.
type pingStats struct {
	sent, received, dups, errors int
	min, max, sum                time.Duration
	sumSq                        float64 // of the times in ms, for mdev
}

func (p *pingStats) add(rtt time.Duration) {
	if p.received == 0 || rtt < p.min {
		p.min = rtt
	}
	if rtt > p.max {
		p.max = rtt
	}
	p.received++
	p.sum += rtt
	ms := msf(rtt)
	p.sumSq += ms * ms
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// summary is iputils' closing lines: counts, loss and elapsed time, then
// rtt min/avg/max/mdev in ms when there was a reply.
func (p *pingStats) summary(dst netip.Addr, elapsed time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "--- %s ping statistics ---\n", dst)
	loss := 0.0
	if p.sent > 0 {
		loss = 100 * float64(p.sent-p.received) / float64(p.sent)
	}
	fmt.Fprintf(&b, "%d packets transmitted, %d received", p.sent, p.received)
	if p.dups > 0 {
		fmt.Fprintf(&b, ", +%d duplicates", p.dups)
	}
	if p.errors > 0 {
		fmt.Fprintf(&b, ", +%d errors", p.errors)
	}
	fmt.Fprintf(&b, ", %.4g%% packet loss, time %dms\n", loss, elapsed.Milliseconds())
	if p.received > 0 {
		n := float64(p.received)
		avg := msf(p.sum) / n
		mdev := math.Sqrt(math.Max(0, p.sumSq/n-avg*avg))
		fmt.Fprintf(&b, "rtt min/avg/max/mdev = %.3f/%.3f/%.3f/%.3f ms\n", msf(p.min), avg, msf(p.max), mdev)
	}
	return b.String()
}
