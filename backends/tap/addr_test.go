package tap

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestAddrRequestIPv4(t *testing.T) {
	b := addrRequest(7, netip.MustParsePrefix("10.0.2.2/24"), 42)
	ne := binary.NativeEndian
	require.Len(t, b, 16+8+8+8)
	assert.Equal(t, uint32(len(b)), ne.Uint32(b[0:]), "nlmsg_len")
	assert.Equal(t, uint16(unix.RTM_NEWADDR), ne.Uint16(b[4:]))
	assert.Equal(t, uint16(unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE), ne.Uint16(b[6:]))
	assert.Equal(t, uint32(42), ne.Uint32(b[8:]), "seq")
	assert.Equal(t, uint32(0), ne.Uint32(b[12:]), "pid")
	assert.Equal(t, []byte{unix.AF_INET, 24, 0, 0}, b[16:20], "family, prefixlen, flags, scope")
	assert.Equal(t, uint32(7), ne.Uint32(b[20:]), "ifindex")
	for i, typ := range []uint16{unix.IFA_LOCAL, unix.IFA_ADDRESS} {
		a := b[24+8*i:]
		assert.Equal(t, uint16(8), ne.Uint16(a[0:]), "rta_len %d", i)
		assert.Equal(t, typ, ne.Uint16(a[2:]), "rta_type %d", i)
		assert.Equal(t, []byte{10, 0, 2, 2}, a[4:8])
	}
}

func TestAddrRequestIPv6(t *testing.T) {
	p := netip.MustParsePrefix("fd00::2/64")
	b := addrRequest(3, p, 1)
	ne := binary.NativeEndian
	require.Len(t, b, 16+8+2*20)
	assert.Equal(t, uint32(len(b)), ne.Uint32(b[0:]))
	assert.Equal(t, byte(unix.AF_INET6), b[16])
	assert.Equal(t, byte(64), b[17])
	a := b[24:]
	assert.Equal(t, uint16(20), ne.Uint16(a[0:]))
	assert.Equal(t, p.Addr().AsSlice(), a[4:20])
	assert.Equal(t, uint16(unix.IFA_ADDRESS), ne.Uint16(b[44+2:]))
}

// nlmsg builds one netlink message of type typ with payload.
func nlmsg(typ uint16, seq uint32, payload []byte) []byte {
	b := make([]byte, nlAlign(16+len(payload)))
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(16+len(payload)))
	ne.PutUint16(b[4:], typ)
	ne.PutUint32(b[8:], seq)
	copy(b[16:], payload)
	return b
}

func errPayload(errno int32) []byte {
	p := make([]byte, 4+16) // error, then the request's header
	binary.NativeEndian.PutUint32(p, uint32(errno))
	return p
}

func TestParseAck(t *testing.T) {
	done, err := parseAck(nlmsg(unix.NLMSG_ERROR, 5, errPayload(0)), 5)
	assert.True(t, done)
	assert.NoError(t, err)

	done, err = parseAck(nlmsg(unix.NLMSG_ERROR, 5, errPayload(-int32(unix.EEXIST))), 5)
	assert.True(t, done)
	assert.ErrorIs(t, err, unix.EEXIST)

	// Another request's answer and a non-error message are skipped; ours
	// after them in the same datagram counts.
	b := append(nlmsg(unix.NLMSG_ERROR, 4, errPayload(-int32(unix.EPERM))), nlmsg(unix.RTM_NEWADDR, 5, []byte{1, 2, 3})...)
	done, err = parseAck(b, 5)
	assert.False(t, done)
	assert.NoError(t, err)
	done, err = parseAck(append(b, nlmsg(unix.NLMSG_ERROR, 5, errPayload(-int32(unix.ENODEV)))...), 5)
	assert.True(t, done)
	assert.ErrorIs(t, err, unix.ENODEV)
}

func TestParseAckMalformed(t *testing.T) {
	ok := nlmsg(unix.NLMSG_ERROR, 1, errPayload(0))
	zeroLen := append([]byte(nil), ok...)
	binary.NativeEndian.PutUint32(zeroLen, 0)
	long := append([]byte(nil), ok...)
	binary.NativeEndian.PutUint32(long, uint32(len(ok)+1))
	cases := map[string][]byte{
		"short header":       ok[:10],
		"zero length":        zeroLen, // would never advance
		"length past end":    long,
		"error without code": nlmsg(unix.NLMSG_ERROR, 1, nil),
	}
	for name, b := range cases {
		done, err := parseAck(b, 1)
		assert.True(t, done, name)
		assert.Error(t, err, name)
	}
}

func FuzzParseAck(f *testing.F) {
	f.Add(nlmsg(unix.NLMSG_ERROR, 1, errPayload(0)), uint32(1))
	f.Add(nlmsg(unix.NLMSG_ERROR, 1, errPayload(-1)), uint32(1))
	f.Add(append(nlmsg(unix.RTM_NEWADDR, 1, []byte{9}), nlmsg(unix.NLMSG_DONE, 2, nil)...), uint32(2))
	f.Fuzz(func(t *testing.T, b []byte, seq uint32) {
		done, err := parseAck(b, seq)
		if !done && err != nil {
			t.Fatalf("not done but error %v", err)
		}
	})
}

func TestCheckAddr(t *testing.T) {
	for _, s := range []string{"10.0.2.2/24", "192.168.1.1/32", "10.0.0.0/31", "fd00::2/64", "172.16.0.254/24"} {
		assert.NoError(t, CheckAddr(netip.MustParsePrefix(s)), s)
	}
	bad := map[string]string{
		"10.0.2.0/24":   "network's own",
		"10.0.2.255/24": "broadcast",
		"0.0.0.0/8":     "not a host address",
		"127.0.0.1/8":   "not a host address",
		"224.0.0.1/24":  "not a host address",
		"::1/128":       "not a host address",
	}
	for s, want := range bad {
		err := CheckAddr(netip.MustParsePrefix(s))
		require.Error(t, err, s)
		assert.Contains(t, err.Error(), want, s)
	}
	err := CheckAddr(netip.MustParsePrefix("10.0.2.0/24"))
	assert.Contains(t, err.Error(), "e.g. 10.0.2.1/24")
	assert.Error(t, CheckAddr(netip.Prefix{}))
	assert.Error(t, CheckAddr(netip.PrefixFrom(netip.MustParseAddr("::ffff:10.0.0.1"), 120)))
}

// TestSetAddr gives a TAP Open created an IPv4 and an IPv6 address, again
// (replaced, not an error), and sees them on the interface.
func TestSetAddr(t *testing.T) {
	needTap(t)
	name := tapName(t, "a")
	tp, err := Open(Options{Name: name})
	require.NoError(t, err)
	defer tp.Close()
	v4, v6 := netip.MustParsePrefix("10.213.7.2/24"), netip.MustParsePrefix("fd00:213::2/64")
	require.NoError(t, tp.SetAddr(v4))
	require.NoError(t, tp.SetAddr(v4), "the same address again")
	if err := tp.SetAddr(v6); err != nil {
		// A host may have IPv6 disabled; the IPv4 part still counts.
		t.Logf("IPv6 address not set: %v", err)
		v6 = netip.Prefix{}
	}
	ifi, err := net.InterfaceByName(name)
	require.NoError(t, err)
	assert.NotZero(t, ifi.Flags&net.FlagUp, "interface is up")
	addrs, err := ifi.Addrs()
	require.NoError(t, err)
	var got []string
	for _, a := range addrs {
		got = append(got, a.String())
	}
	assert.Contains(t, got, v4.String())
	if v6.IsValid() {
		assert.Contains(t, got, v6.String())
	}
	n := 0
	for _, g := range got {
		if g == v4.String() {
			n++
		}
	}
	assert.Equal(t, 1, n, "the address once: %v", got)
}

func TestAddAddrErrors(t *testing.T) {
	err := AddAddr("ptvnone0", netip.MustParsePrefix("10.0.2.2/24"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ptvnone0")
	err = AddAddr("lo", netip.MustParsePrefix("10.0.2.0/24"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "network's own")
}
