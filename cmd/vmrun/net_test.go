package main

import (
	"flag"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/notify"
	"github.com/ptvmm/ptvmm/vmm"
)

func TestParseNet(t *testing.T) {
	nic, err := parseNet("virtio,tap=tap0,mac=52:54:00:aa:bb:cc,queues=2,mtu=9000")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Tap: "tap0", MAC: [6]byte{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}, Queues: 2, MTU: 9000}, nic)
	nic, err = parseNet("virtio,tap=t1")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Tap: "t1"}, nic)
	nic, err = parseNet("virtio,tap=t1,host-ip=10.0.2.2/24")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Tap: "t1", HostIP: netip.MustParsePrefix("10.0.2.2/24")}, nic)
	nic, err = parseNet("virtio,host-ip=fd00::1/64,tap=t1")
	require.NoError(t, err)
	assert.Equal(t, netip.MustParsePrefix("fd00::1/64"), nic.HostIP)
	nic, err = parseNet("virtio,port=vale0:vm2")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Port: "vale0:vm2"}, nic)
	nic, err = parseNet("ptnet,port=vale1:x@conf:rings=2,mac=02:00:00:00:00:09")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Model: vmm.NICPtnet, Port: "vale1:x@conf:rings=2", MAC: [6]byte{2, 0, 0, 0, 0, 9}}, nic)
	nic, err = parseNet("ptnet,port=vale0:a,poll=50us")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Model: vmm.NICPtnet, Port: "vale0:a", Mode: notify.Adaptive, Spin: 50 * time.Microsecond}, nic)
	nic, err = parseNet("virtio,tap=t1,poll=0")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Tap: "t1", Mode: notify.Block}, nic)

	bad := map[string]string{
		"e1000,tap=tap0":                          "not virtio or ptnet",
		"virtio":                                  "tap=NAME or port=PORT is required",
		"virtio,tap=t,port=vale0:a":               "not both",
		"virtio,port=tap0":                        "switch port valeX:Y",
		"virtio,port=vale0:":                      "port=",
		"virtio,port=pipe{":                       "port=",
		"virtio,port=netmap:eth0":                 "switch port valeX:Y",
		"ptnet":                                   "ptnet needs port=PORT",
		"ptnet,tap=tap0":                          "use port=PORT",
		"ptnet,port=vale0:a,queues=2":             "@conf:rings=N",
		"ptnet,port=vale0:a,mtu=1500":             "no mtu= option",
		"ptnet,port=vale0:a,color=red":            "(port, mac, poll)",
		"ptnet,port=vale0:a,poll=fast":            "e.g. poll=50us",
		"virtio,tap=t,poll=-1us":                  "from 0 (sleep at once",
		"virtio,tap=t,poll=2s":                    "to 1s",
		"virtio,tap":                              "not key=value",
		"virtio,tap=":                             "not key=value",
		"virtio,tap=a-name-far-too-long-x":        "interface name",
		"virtio,tap=a/b":                          "interface name",
		"virtio,tap=t,mac=zz":                     "MAC address",
		"virtio,tap=t,mac=01:00:5e:00:00:01":      "multicast",
		"virtio,tap=t,queues=0":                   "queue pairs",
		"virtio,tap=t,queues=x":                   "queue pairs",
		"virtio,tap=t,queues=17":                  "queue pairs",
		"virtio,tap=t,mtu=20":                     "MTU",
		"virtio,tap=t,color=red":                  "unknown option",
		"virtio,tap=t,host-ip=10.0.2.2":           "needs a prefix length, e.g. host-ip=10.0.2.2/24",
		"virtio,tap=t,host-ip=10.0.2/24":          "like 10.0.2.2/24",
		"virtio,tap=t,host-ip=10.0.2.2/33":        "like 10.0.2.2/24",
		"virtio,tap=t,host-ip=10.0.2.0/24":        "host-ip=10.0.2.0/24: that is the network's own",
		"virtio,tap=t,host-ip=127.0.0.1/8":        "not a host address",
		"virtio,port=vale0:a,host-ip=10.0.2.2/24": "host-ip= goes with tap=NAME",
		"ptnet,port=vale0:a,host-ip=10.0.2.2/24":  "ptnet has no host-ip=",
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
	// bhyve's forms: ptnet on a switch port or a pipe end, virtio-net on a switch port.
	nic, err = parseSlot("4,ptnet,vale0:vm1")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Model: vmm.NICPtnet, Port: "vale0:vm1", Slot: 4}, nic)
	nic, err = parseSlot("5,ptnet,pipe0{1")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Model: vmm.NICPtnet, Port: "pipe0{1", Slot: 5}, nic)
	nic, err = parseSlot("6,virtio-net,vale0:vm2")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Port: "vale0:vm2", Slot: 6}, nic)
	nic, err = parseSlot("7,virtio-net,tap7,host-ip=192.168.7.1/24")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Tap: "tap7", Slot: 7, HostIP: netip.MustParsePrefix("192.168.7.1/24")}, nic)
	nic, err = parseSlot("8,ptnet,vale0:vm1,poll=20us")
	require.NoError(t, err)
	assert.Equal(t, vmm.NIC{Model: vmm.NICPtnet, Port: "vale0:vm1", Slot: 8, Mode: notify.Adaptive, Spin: 20 * time.Microsecond}, nic)

	bad := map[string]string{
		"2,virtio-net":                             "SLOT,virtio-net,TAP|PORT",
		"0,virtio-net,tap0":                        "1..31",
		"32,virtio-net,tap0":                       "1..31",
		"x,virtio-net,tap0":                        "1..31",
		"2:1,virtio-net,tap0":                      "function 0",
		"2,virtio-blk,disk":                        "not supported",
		"2,ptnet,tap0":                             "switch port valeX:Y",
		"2,ptnet,vale0:a,queues=2":                 "@conf:rings=N",
		"2,virtio-net,t,tap=u":                     "not one of mac=",
		"2,virtio-net,t,port=vale0:x":              "not one of mac=",
		"2,virtio-net,t,mtu=1":                     "MTU",
		"2,virtio-net,t,host-ip=x":                 "like 10.0.2.2/24",
		"2,virtio-net,vale0:a,host-ip=10.0.2.2/24": "host-ip= goes with a TAP",
		"2,ptnet,vale0:a,host-ip=10.0.2.2/24":      "ptnet has no host-ip=",
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
	assert.ErrorContains(t, checkNICs([]vmm.NIC{{Port: "vale0:a"}, {Model: vmm.NICPtnet, Port: "vale0:a@conf:rings=2"}}), "two NICs")
	require.NoError(t, checkNICs([]vmm.NIC{{Port: "vale0:a"}, {Model: vmm.NICPtnet, Port: "vale0:b"}, {Tap: "t"}}))
}

func TestSwitchTapFlag(t *testing.T) {
	var taps [][2]string
	f := switchTapFlag{&taps}
	require.NoError(t, f.Set("vale0:tap0"))
	assert.Equal(t, [][2]string{{"vale0", "tap0"}}, taps)
	for in, want := range map[string]string{
		"tap0":      "valeX:TAPNAME",
		"vale0:":    "valeX:TAPNAME",
		"sw0:tap0":  "valeX:TAPNAME",
		"vale0:a/b": "valeX:TAPNAME",
		"vale0:a:b": "valeX:TAPNAME",
	} {
		assert.ErrorContains(t, f.Set(in), want, in)
	}
}
