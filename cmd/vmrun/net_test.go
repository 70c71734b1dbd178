package main

import (
	"flag"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/vmm"
)

func TestParseNet(t *testing.T) {
	nic, err := parseNet("virtio,tap=tap0,mac=52:54:00:aa:bb:cc,queues=2,mtu=9000")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Tap: "tap0", MAC: [6]byte{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}, Queues: 2, MTU: 9000}, nic)
	nic, err = parseNet("virtio,tap=t1")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Tap: "t1"}, nic)

	bad := map[string]string{
		"e1000,tap=tap0":                     "only model",
		"virtio":                             "tap=NAME is required",
		"virtio,tap":                         "not key=value",
		"virtio,tap=":                        "not key=value",
		"virtio,tap=a-name-far-too-long-x":   "interface name",
		"virtio,tap=a/b":                     "interface name",
		"virtio,tap=t,mac=zz":                "MAC address",
		"virtio,tap=t,mac=01:00:5e:00:00:01": "multicast",
		"virtio,tap=t,queues=0":              "queue pairs",
		"virtio,tap=t,queues=x":              "queue pairs",
		"virtio,tap=t,queues=17":             "queue pairs",
		"virtio,tap=t,mtu=20":                "MTU",
		"virtio,tap=t,color=red":             "unknown option",
	}
	for in, want := range bad {
		_, err := parseNet(in)
		require.Error(t, err, in)
		assert.Contains(t, err.Error(), want, in)
	}
}

func TestParseSlot(t *testing.T) {
	nic, err := parseSlot("2:0,virtio-net,tap0,mac=02:00:00:00:00:01")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Tap: "tap0", Slot: 2, MAC: [6]byte{2, 0, 0, 0, 0, 1}}, nic)
	nic, err = parseSlot("31,virtio-net,t")
	require.NoError(t, err)
	assert.Equal(t, 31, nic.Slot)

	bad := map[string]string{
		"2,virtio-net":         "SLOT,virtio-net,TAPNAME",
		"0,virtio-net,tap0":    "1..31",
		"32,virtio-net,tap0":   "1..31",
		"x,virtio-net,tap0":    "1..31",
		"2:1,virtio-net,tap0":  "function 0",
		"2,virtio-blk,disk":    "not supported",
		"2,virtio-net,vale0:1": "only TAP backends",
		"2,virtio-net,t,tap=u": "not mac=",
		"2,virtio-net,t,mtu=1": "MTU",
	}
	for in, want := range bad {
		_, err := parseSlot(in)
		require.Error(t, err, in)
		assert.Contains(t, err.Error(), want, in)
	}
}

func TestNICFlagsRepeatAndCheck(t *testing.T) {
	var nf nicFlags
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(netFlag{&nf}, "net", "")
	fs.Var(slotFlag{&nf}, "s", "")
	require.NoError(t, fs.Parse([]string{"-net", "virtio,tap=a", "-s", "3,virtio-net,b", "-net", "virtio,tap=c,queues=2"}))
	require.Len(t, nf.nics, 3)
	assert.Equal(t, []string{"a", "b", "c"}, []string{nf.nics[0].Tap, nf.nics[1].Tap, nf.nics[2].Tap})
	require.NoError(t, checkNICs(nf.nics))
	assert.Error(t, fs.Parse([]string{"-net", "bogus"}))
	assert.ErrorContains(t, checkNICs([]vmm.NIC{{Tap: "a"}, {Tap: "a"}}), "two NICs")
	assert.ErrorContains(t, checkNICs([]vmm.NIC{{Tap: "a", Slot: 3}, {Tap: "b", Slot: 3}}), "slot 3")
}
