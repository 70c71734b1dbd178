package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/tap"
)

func TestChecksum(t *testing.T) {
	// RFC 1071's example: the sum of these words is 0xddf2.
	assert.Equal(t, ^uint16(0xddf2), checksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}))
	// An odd last byte counts as the high half of a word.
	assert.Equal(t, ^uint16(0xab00), checksum([]byte{0xab}))
	assert.Equal(t, uint16(0xffff), checksum(nil))
	// Carries fold back in: 0xffff + 0x0001 = 0x0001 after the fold.
	assert.Equal(t, ^uint16(0x0001), checksum([]byte{0xff, 0xff, 0x00, 0x01}))
}

func TestEchoRequest(t *testing.T) {
	b := echoRequest(0x1234, 7, []byte("abc"))
	require.Len(t, b, 11)
	assert.Equal(t, byte(icmpEchoRequest), b[0])
	assert.Equal(t, byte(0), b[1])
	assert.Equal(t, uint16(0x1234), binary.BigEndian.Uint16(b[4:]))
	assert.Equal(t, uint16(7), binary.BigEndian.Uint16(b[6:]))
	assert.Equal(t, "abc", string(b[8:]))
	assert.Equal(t, uint16(0), checksum(b), "a checksummed message sums to zero")
}

// reply is what a peer sends: the request turned into a reply, checksum redone.
func reply(req []byte) []byte {
	b := append([]byte(nil), req...)
	b[0] = icmpEchoReply
	b[2], b[3] = 0, 0
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

// ipv4 wraps an ICMP message in an IPv4 header from src with ttl.
func ipv4(icmp []byte, src [4]byte, ttl byte) []byte {
	h := make([]byte, 20, 20+len(icmp))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(icmp)))
	h[8], h[9] = ttl, protoICMP
	copy(h[12:], src[:])
	return append(h, icmp...)
}

func TestParseReply(t *testing.T) {
	icmp := reply(echoRequest(0xbeef, 3, pingPayload(56)))
	r, err := parseReply(ipv4(icmp, [4]byte{10, 0, 2, 2}, 64), true)
	require.NoError(t, err)
	assert.Equal(t, netip.MustParseAddr("10.0.2.2"), r.From)
	assert.Equal(t, 64, r.TTL)
	assert.Equal(t, uint16(0xbeef), r.ID)
	assert.Equal(t, uint16(3), r.Seq)
	assert.Equal(t, pingPayload(56), r.Data)

	// A datagram socket gives the ICMP message alone.
	r, err = parseReply(icmp, false)
	require.NoError(t, err)
	assert.False(t, r.From.IsValid())
	assert.Equal(t, -1, r.TTL)
	assert.Equal(t, uint16(3), r.Seq)

	// IP options (IHL 6) and padding after the total length are skipped.
	p := ipv4(icmp, [4]byte{1, 2, 3, 4}, 1)
	opt := append(append([]byte{0x46}, p[1:20]...), 1, 1, 1, 1)
	binary.BigEndian.PutUint16(opt[2:], uint16(24+len(icmp)))
	opt = append(append(opt, icmp...), 0, 0, 0)
	r, err = parseReply(opt, true)
	require.NoError(t, err)
	assert.Equal(t, pingPayload(56), r.Data)
}

// TestParseReplyAttacks: what a peer (or anything on the link) can send.
func TestParseReplyAttacks(t *testing.T) {
	good := ipv4(reply(echoRequest(1, 1, []byte("x"))), [4]byte{10, 0, 0, 1}, 64)
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := map[string][]byte{
		"empty":                   nil,
		"IP header truncated":     good[:19],
		"IPv6 version":            mod(func(b []byte) []byte { b[0] = 0x65; return b }),
		"IHL below 5":             mod(func(b []byte) []byte { b[0] = 0x44; return b }),
		"IHL past the end":        mod(func(b []byte) []byte { b[0] = 0x4f; return b }),
		"total below IHL":         mod(func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 10); return b }),
		"total past the end":      mod(func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 2000); return b }),
		"ICMP truncated":          mod(func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 27); return b }),
		"bad checksum":            mod(func(b []byte) []byte { b[len(b)-1] ^= 0xff; return b }),
		"echo request (ours)":     ipv4(echoRequest(1, 1, nil), [4]byte{10, 0, 0, 1}, 64),
		"not ICMP":                mod(func(b []byte) []byte { b[9] = 17; return b }),
		"reply with a code":       mod(func(b []byte) []byte { b[21] = 1; return b }),
		"destination unreachable": mod(func(b []byte) []byte { b[20] = 3; return b }),
	}
	for name, b := range cases {
		_, err := parseReply(b, true)
		assert.Error(t, err, name)
	}
	_, err := parseReply(good, true)
	require.NoError(t, err)
	_, err = parseReply(good[20:27], false)
	assert.Error(t, err, "datagram truncated")
}

func FuzzParseReply(f *testing.F) {
	icmp := reply(echoRequest(9, 9, pingPayload(8)))
	f.Add(ipv4(icmp, [4]byte{10, 0, 2, 2}, 64), true)
	f.Add(icmp, false)
	f.Add([]byte{0x4f, 0, 0, 0xff}, true)
	f.Fuzz(func(t *testing.T, b []byte, ipHdr bool) {
		r, err := parseReply(b, ipHdr)
		if err != nil {
			return
		}
		if len(r.Data)+icmpHdrLen > len(b) {
			t.Fatalf("payload of %d bytes from a %d-byte packet", len(r.Data), len(b))
		}
		if ipHdr != r.From.IsValid() || ipHdr != (r.TTL >= 0) {
			t.Fatalf("source %v, ttl %d with ipHdr %v", r.From, r.TTL, ipHdr)
		}
	})
}

func TestPingStatsSummary(t *testing.T) {
	var st pingStats
	st.sent = 5
	for _, ms := range []int{2, 1, 3} {
		st.add(time.Duration(ms) * time.Millisecond)
	}
	st.dups = 1
	got := st.summary(netip.MustParseAddr("10.0.2.2"), 4005*time.Millisecond)
	assert.Equal(t, "--- 10.0.2.2 ping statistics ---\n"+
		"5 packets transmitted, 3 received, +1 duplicates, 40% packet loss, time 4005ms\n"+
		"rtt min/avg/max/mdev = 1.000/2.000/3.000/0.816 ms\n", got)

	none := pingStats{sent: 2}
	got = none.summary(netip.MustParseAddr("10.0.2.2"), time.Second)
	assert.Contains(t, got, "2 packets transmitted, 0 received, 100% packet loss")
	assert.NotContains(t, got, "rtt")
}

func runApplet(t *testing.T, name string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	st := applets[name].run(args, stdio{strings.NewReader(""), &out, &errb})
	return st, out.String(), errb.String()
}

func TestPingUsage(t *testing.T) {
	for _, args := range [][]string{
		{}, {"10.0.2.2", "extra"}, {"host.example"}, {"::1"}, {"-c", "-1", "10.0.2.2"},
		{"-i", "0", "10.0.2.2"}, {"-i", "soon", "10.0.2.2"}, {"-s", "70000", "10.0.2.2"}, {"-W", "x", "10.0.2.2"}, {"-q", "10.0.2.2"},
	} {
		st, _, errs := runApplet(t, "ping", args...)
		assert.Equal(t, 2, st, "%q", args)
		assert.NotEmpty(t, errs, "%q", args)
	}
}

func needPingSocket(t *testing.T) {
	t.Helper()
	s, err := openPingSocket()
	if err != nil {
		t.Skip("no ICMP socket here: ", err)
	}
	s.close()
	loopbackUp(t)
}

// loopbackUp brings lo up where nobody did (the QEMU test host, a guest whose
// init sets up nothing): pings to this host's own addresses go through it.
func loopbackUp(t *testing.T) {
	t.Helper()
	ifc, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skip("no loopback interface: ", err)
	}
	if ifc.Flags&net.FlagUp != 0 {
		return
	}
	if err := tap.SetLinkUp("lo"); err != nil {
		t.Skip("loopback is down and cannot be brought up: ", err)
	}
}

// TestPingLoopback pings this host: every request gets its reply once, and
// the lines and statistics say so. (A raw socket also sees our own requests
// on lo, which must not count.)
func TestPingLoopback(t *testing.T) {
	needPingSocket(t)
	st, out, errs := runApplet(t, "ping", "-c", "3", "-i", "10ms", "127.0.0.1")
	require.Equal(t, 0, st, "stderr: %s\n%s", errs, out)
	assert.Contains(t, out, "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.\n")
	for seq := 1; seq <= 3; seq++ {
		assert.Contains(t, out, fmt.Sprintf("64 bytes from 127.0.0.1: icmp_seq=%d ", seq))
	}
	assert.Equal(t, 3, strings.Count(out, " bytes from "), out)
	assert.NotContains(t, out, "DUP!")
	assert.NotContains(t, out, "wrong data")
	assert.Contains(t, out, "3 packets transmitted, 3 received, 0% packet loss")
	assert.Contains(t, out, "rtt min/avg/max/mdev = ")
}

// TestPingInterrupted: without -c, ping runs until its context ends (SIGINT)
// and still prints the statistics.
func TestPingInterrupted(t *testing.T) {
	needPingSocket(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out bytes.Buffer
	o := pingOptions{interval: time.Second, wait: time.Second, size: 8}
	st := ping(ctx, netip.MustParseAddr("127.0.0.1"), o, stdio{nil, &out, &out})
	assert.Contains(t, []int{0, 1}, st)
	assert.Contains(t, out.String(), "1 packets transmitted")
}

func TestIfconfigErrors(t *testing.T) {
	st, _, errs := runApplet(t, "ifconfig", "ptvnone0")
	assert.Equal(t, 1, st)
	assert.Contains(t, errs, "ptvnone0")
	st, _, errs = runApplet(t, "ifconfig", "lo", "10.0.2.15")
	assert.Equal(t, 2, st)
	assert.Contains(t, errs, "prefix length")
	st, _, _ = runApplet(t, "ifconfig", "a", "b", "c")
	assert.Equal(t, 2, st)
	st, out, _ := runApplet(t, "ifconfig")
	assert.Equal(t, 0, st)
	assert.Contains(t, out, "lo: <")
}

// TestIfconfigTap sets up a real interface (a TAP standing in for the
// guest's eth0) and sees it up with the address.
func TestIfconfigTap(t *testing.T) {
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create a TAP: " + why)
	}
	loopbackUp(t) // the TAP's own address answers through lo
	name := fmt.Sprintf("ptvg%d", os.Getpid()%100000)
	tp, err := tap.Open(tap.Options{Name: name})
	require.NoError(t, err)
	defer tp.Close()
	st, out, errs := runApplet(t, "ifconfig", name, "10.213.8.15/24")
	require.Equal(t, 0, st, errs)
	assert.Contains(t, out, name+": <up,")
	assert.Contains(t, out, " inet 10.213.8.15/24")

	// The address answers; a neighbour on the TAP's link that nobody plays
	// does not (its ARP request goes unanswered): status 1 after -W.
	st, out, errs = runApplet(t, "ping", "-c", "1", "10.213.8.15")
	assert.Equal(t, 0, st, "%s%s", out, errs)
	st, out, _ = runApplet(t, "ping", "-c", "2", "-i", "10ms", "-W", "200ms", "10.213.8.16")
	assert.Equal(t, 1, st, out)
	assert.Contains(t, out, "2 packets transmitted, 0 received, 100% packet loss")
	assert.NotContains(t, out, "rtt")
}

// TestRecvTTL: a datagram socket's reply TTL comes as an IP_TTL control message.
func TestRecvTTL(t *testing.T) {
	oob := make([]byte, unix.CmsgSpace(4))
	ne := binary.NativeEndian
	ne.PutUint64(oob[0:], uint64(unix.CmsgLen(4))) // cmsg_len (64-bit)
	ne.PutUint32(oob[8:], uint32(unix.IPPROTO_IP))
	ne.PutUint32(oob[12:], uint32(unix.IP_TTL))
	ne.PutUint32(oob[unix.CmsgLen(0):], 57)
	assert.Equal(t, 57, recvTTL(oob))
	assert.Equal(t, -1, recvTTL(nil))
	assert.Equal(t, -1, recvTTL(oob[:10]))
	ne.PutUint32(oob[12:], uint32(unix.IP_TOS))
	assert.Equal(t, -1, recvTTL(oob))
}
