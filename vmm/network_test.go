package vmm

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

func TestNICCheck(t *testing.T) {
	good := []NIC{
		{Tap: "tap0"},
		{Port: "vale0:a"},
		{Port: "p{1"},
		{Model: NICPtnet, Port: "vale0:b@conf:rings=2"},
		{Model: NICPtnet, Port: "p}1"},
		{Tap: "tap0", HostIP: netip.MustParsePrefix("10.0.2.2/24")},
	}
	for _, n := range good {
		assert.NoError(t, n.check(), "%+v", n)
	}
	bad := map[string]NIC{
		"exactly one":        {},
		"exactly one ":       {Tap: "t", Port: "vale0:a"},
		"one queue pair":     {Port: "vale0:a", Queues: 2},
		"needs Port":         {Model: NICPtnet},
		"no Tap":             {Model: NICPtnet, Port: "vale0:a", Tap: "t"},
		"not Queues":         {Model: NICPtnet, Port: "vale0:a", Queues: 2},
		"unknown NIC model":  {Model: 7, Tap: "t"},
		"valeX:Y":            {Port: "netmap:eth0"},
		"HostIP needs a TAP": {Port: "vale0:a", HostIP: netip.MustParsePrefix("10.0.2.2/24")},
		"network's own":      {Tap: "t", HostIP: netip.MustParsePrefix("10.0.2.0/24")},
	}
	for want, n := range bad {
		assert.ErrorContains(t, n.check(), want, "%+v", n)
	}
}

func TestNetworkPorts(t *testing.T) {
	n := NewNetwork()
	defer n.Close()
	// A switch port: created on first use, released by detaching.
	np, release, err := n.OpenPort("vale0:vm1", netmap.PortConfig{})
	require.NoError(t, err)
	sw := n.Switches().Get("vale0")
	require.NotNil(t, sw)
	require.NotNil(t, sw.PortByName("vm1"))
	_, _, err = n.OpenPort("vale0:vm1", netmap.PortConfig{})
	assert.Error(t, err, "a port name is taken once")
	assert.Equal(t, 1, np.NumTxRings())
	require.NoError(t, release())
	assert.Nil(t, sw.PortByName("vm1"))

	// Pipe ends: each end once, the pair freed when both closed.
	m, relM, err := n.OpenPort("pp{3", netmap.PortConfig{})
	require.NoError(t, err)
	s, relS, err := n.OpenPort("pp}3", netmap.PortConfig{})
	require.NoError(t, err)
	assert.Same(t, m.Region(), s.Region(), "pipe ends share their region")
	_, _, err = n.OpenPort("pp{3", netmap.PortConfig{})
	assert.Error(t, err)
	require.NoError(t, relM())
	require.NoError(t, relS())

	// A virtio-net backend on a switch port is a plain-Ethernet endpoint.
	ep, err := n.OpenEndpoint("vale0:vm2")
	require.NoError(t, err)
	assert.Equal(t, "vale0:vm2", ep.Name())
	require.NoError(t, ep.Close())
	assert.Nil(t, sw.PortByName("vm2"))

	for _, name := range []string{"eth0", "netmap:eth0", "vale0:", "x{"} {
		_, _, err := n.OpenPort(name, netmap.PortConfig{})
		assert.Error(t, err, name)
	}
	assert.Error(t, n.AttachTap("sw0", "tap0"), "switch names start with vale")
}
