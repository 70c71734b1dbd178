package agent

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/guest/pktgen"
)

// TestPktgenIfaceUsage: -iface excludes ptnet's options, and a missing interface is
// a failure that names it.
func TestPktgenIfaceUsage(t *testing.T) {
	for _, args := range [][]string{
		{"-iface", "eth0", "-dev", "/dev/ptnet0"},
		{"-iface", "eth0", "-uncached"},
		{"-iface", "eth0", "-vnet-hdr"},
		{"-iface", "eth0", "-ring", "1"},
	} {
		status, _, errout := run(t, "", append([]string{"ptvmm-agent", "pktgen"}, args...)...)
		assert.Equal(t, 2, status, args)
		assert.Contains(t, errout, "-iface works on a packet socket", args)
	}
	status, _, errout := run(t, "", "ptvmm-agent", "pktgen", "-iface", "ptvnoiface0", "-count", "1")
	assert.Equal(t, 1, status)
	assert.Contains(t, errout, "ptvnoiface0")
}

// TestPktgenIfaceLoopback: as root, pktgen -iface lo sends its frames through a
// packet socket and prints the summary the tests parse.
func TestPktgenIfaceLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a packet socket needs CAP_NET_RAW")
	}
	status, out, errout := run(t, "", "ptvmm-agent", "pktgen", "-iface", "lo", "-mode", "tx", "-count", "300", "-size", "100", "-batch", "32")
	require.Equal(t, 0, status, errout)
	assert.Contains(t, out, "pktgen: lo (packet socket, sendmmsg/recvmmsg)")
	s, ok := pktgen.ParseSummary(out)
	require.True(t, ok, out)
	frames, err := s.Uint("frames")
	require.NoError(t, err)
	assert.Equal(t, uint64(300), frames)
	kicks, err := s.Uint("kicks")
	require.NoError(t, err)
	assert.Positive(t, kicks)
	assert.LessOrEqual(t, kicks, uint64(300/32+1), "one sendmmsg per batch")
}
