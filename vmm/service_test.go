package vmm

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"github.com/ptvmm/ptvmm/backends/vale"
	"github.com/ptvmm/ptvmm/devices/ptmemdev"
	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/memory"
)

func switchService(t *testing.T) *vale.Client {
	t.Helper()
	s, err := vale.NewService(vale.ServiceConfig{Socket: filepath.Join(t.TempDir(), "sw.sock"), Logf: t.Logf})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() { s.Close(); <-done })
	c, err := vale.Dial(s.Path())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// A service network hands out service ports: endpoints are driver-side users of
// them, in-process ports are refused.
func TestServiceNetworkEndpoint(t *testing.T) {
	c := switchService(t)
	n := NewServiceNetwork(c)
	require.Same(t, c, n.Service())
	a, err := n.OpenEndpoint("vale0:a")
	require.NoError(t, err)
	defer a.Close()
	b, err := n.OpenEndpoint("vale0:b")
	require.NoError(t, err)
	defer b.Close()
	_, _, err = n.OpenPort("vale0:c", netmap.PortConfig{})
	require.ErrorContains(t, err, "switch service")

	f := make([]byte, 60)
	copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1})
	k, err := a.Send([][]byte{f})
	require.NoError(t, err)
	require.Equal(t, 1, k)
	bufs, lens := [][]byte{make([]byte, 2048)}, []int{0}
	deadline := time.Now().Add(5 * time.Second)
	for {
		k, err = b.Recv(bufs, lens)
		require.NoError(t, err)
		if k == 1 || time.Now().After(deadline) {
			break
		}
	}
	require.Equal(t, 1, k)
	require.Equal(t, f, bufs[0][:lens[0]])
	es, err := c.List()
	require.NoError(t, err)
	require.Len(t, es, 2)
}

// TestPtnetOnServiceKVM: a micro guest whose RAM is a memfd programs a ptnet on a
// switch service port like netmap's driver (CSB addresses, PTCTL CREATE): the
// service maps the CSB pages from the guest's RAM memfd and writes them (the idle
// TX ring's hwtail), and runs the port's loop until the VM closes, which detaches
// the port.
func TestPtnetOnServiceKVM(t *testing.T) {
	kvmOrSkip(t)
	c := switchService(t)
	placeholder := micro.New(boot.MicroCodeAddr)
	placeholder.Halt()
	code, err := placeholder.Assemble()
	require.NoError(t, err)
	v, err := New(Config{Micro: &Micro{Code: code, Options: pioOpts}, Memory: memory.Options{MemFD: true},
		Network: NewServiceNetwork(c)})
	require.NoError(t, err)
	closed := false
	defer func() {
		if !closed {
			v.Close()
		}
	}()
	nd, err := v.AddNIC(0, NIC{Model: NICPtnet, Port: "vale0:g@conf:slots=64"})
	require.NoError(t, err)
	pd := nd.Ptnet
	require.NotNil(t, pd)
	es, err := c.List()
	require.NoError(t, err)
	require.Len(t, es, 1)
	assert.False(t, es[0].Loop, "no loop before CREATE")

	bar0, ok := pd.Ptnet.Function.BARAddr(ptmemdev.RegsBAR)
	require.True(t, ok)
	const gh, hg, result = boot.MicroDataAddr, boot.MicroDataAddr + 0x1000, boot.MicroDataAddr + 0x2000
	a := micro.New(boot.MicroCodeAddr)
	a.StoreImm32(bar0+ptmemdev.RegCSBGHBAH, 0)
	a.StoreImm32(bar0+ptmemdev.RegCSBGHBAL, gh)
	a.StoreImm32(bar0+ptmemdev.RegCSBHGBAH, 0)
	a.StoreImm32(bar0+ptmemdev.RegCSBHGBAL, hg)
	a.StoreImm32(bar0+ptmemdev.RegPtctl, ptmemdev.PtctlCreate)
	a.MovImm(micro.RBX, bar0+ptmemdev.RegPtctl)
	a.Load32(micro.RAX, micro.RBX, 0)
	a.MovImm(micro.RBX, result)
	a.Store32(micro.RBX, 0, micro.RAX)
	a.MovImm(micro.RDX, 0x64) // i8042 reset line
	a.MovImm(micro.RAX, 0xfe)
	a.Out8()
	a.Halt()
	code, err = a.Assemble()
	require.NoError(t, err)
	require.NoError(t, v.Memory().WriteAt(code, boot.MicroCodeAddr))
	require.NoError(t, v.Memory().Write32(result, 0xdead))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, v.Run(ctx))
	r, err := v.Memory().Read32(result)
	require.NoError(t, err)
	require.Zero(t, r, "PTCTL after CREATE")
	hwtail, err := v.Memory().Read32(hg + netmap.CSBHwTailOff)
	require.NoError(t, err)
	assert.Equal(t, uint32(63), hwtail, "the service wrote the idle TX ring's hwtail into guest RAM")
	kick, err := v.Memory().Read32(hg + netmap.CSBKernNeedKickOff)
	require.NoError(t, err)
	assert.Equal(t, uint32(1), kick)
	es, err = c.List()
	require.NoError(t, err)
	require.Len(t, es, 1)
	assert.True(t, es[0].Loop, "the service runs the loop")

	closed = true
	require.NoError(t, v.Close())
	es, err = c.List()
	require.NoError(t, err)
	assert.Empty(t, es, "closing the VM detached its port")
}
