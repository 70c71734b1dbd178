package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/tap"
	"github.com/ptvmm/ptvmm/internal/testhost"
	"github.com/ptvmm/ptvmm/vmm"
)

// seqPort is a frame backend over one end of a SOCK_SEQPACKET socketpair (frames
// keep their boundaries; the test holds the other end).
type seqPort struct{ fd int }

func (s *seqPort) Name() string { return "seqpacket" }
func (s *seqPort) ReadyFD() int { return s.fd }
func (s *seqPort) Close() error { return unix.Close(s.fd) }
func (s *seqPort) Send(f [][]byte) (int, error) {
	for i, b := range f {
		if _, err := unix.Write(s.fd, b); err != nil {
			return i, err
		}
	}
	return len(f), nil
}
func (s *seqPort) Recv(bufs [][]byte, lens []int) (int, error) {
	for i := range bufs {
		n, err := unix.Read(s.fd, bufs[i])
		if err == unix.EAGAIN {
			return i, nil
		}
		if err != nil {
			return i, err
		}
		lens[i] = n
	}
	return len(bufs), nil
}

var netCheckCmd = "/bin/ptvmm-agent cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu /proc/interrupts"

// bootNIC boots the guest with nic and runs cmd; it returns the console.
func bootNIC(t *testing.T, nic vmm.NIC, cmd string) (*console, *vmm.NICDevice) {
	t.Helper()
	dir := requireGuest(t)
	k, err := testhost.LoadKernel(filepath.Join(dir, testhost.AssetKernelDir))
	require.NoError(t, err)
	mods, err := testhost.GuestModuleArg(k, "virtio-net")
	require.NoError(t, err)
	c := &console{start: time.Now()}
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	done := make(chan struct{})
	go func() { c.feed(pr); close(done) }()
	watch := vmm.NewAgentWatcher(pw)
	vm, err := vmm.New(vmm.Config{
		Kernel:  filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		Initrd:  filepath.Join(dir, testhost.AssetGuestInit),
		Cmdline: testhost.GuestCmdline(cmd, mods),
		MemSize: 512 << 20,
		CPUs:    2,
		Console: watch,
		Start:   c.start,
	})
	if err != nil {
		pw.Close()
		<-done
		require.NoError(t, err)
	}
	defer vm.Close()
	nd, err := vm.AddNIC(0, nic)
	require.NoError(t, err)
	t.Cleanup(func() { nd.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	runErr := vm.Run(ctx)
	pw.Close()
	<-done
	fail := func() string { return failHint + "last console lines:\n" + c.tail(60) }
	require.NoError(t, runErr, fail())
	status, ok := watch.ExitStatus()
	require.True(t, ok, "no exit status; %s", fail())
	assert.Equal(t, 0, status, fail())
	t.Logf("inner guest with a NIC: agent ready %.2fs, done %.2fs", c.ready.Seconds(), time.Since(c.start).Seconds())
	return c, nd
}

// checkNIC asserts what netCheckCmd printed: our MAC, the MTU we offered and one
// MSI-X vector per queue plus the config vector.
func checkNIC(t *testing.T, c *console, mac string, mtu int) {
	t.Helper()
	fail := func() string { return failHint + "last console lines:\n" + c.tail(60) }
	assert.True(t, c.hasLine(mac), "eth0 has not our MAC %s; %s", mac, fail())
	assert.True(t, c.hasLine(fmt.Sprint(mtu)), "eth0 MTU is not %d; %s", mtu, fail())
	out := c.text()
	for _, irq := range []string{"virtio0-config", "virtio0-input.0", "virtio0-output.0", "virtio0-input.1", "virtio0-output.1"} {
		assert.True(t, strings.Contains(out, irq), "no MSI-X vector %s in /proc/interrupts; %s", irq, fail())
	}
}

// TestVirtioNetGuest boots Debian's kernel with a two-pair virtio-net NIC whose
// backend is a pair of socketpairs: Linux's virtio_net must bind (through the
// transitional device's legacy registers), show eth0 with our MAC and MTU, and get
// one MSI-X vector per queue.
func TestVirtioNetGuest(t *testing.T) {
	requireGuest(t)
	var ports []backends.Port
	for i := 0; i < 2; i++ {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		t.Cleanup(func() { unix.Close(fds[1]) })
		ports = append(ports, &seqPort{fd: fds[0]})
	}
	c, _ := bootNIC(t, vmm.NIC{Ports: ports, PortsVnetHdr: true, Queues: 2, MAC: [6]byte{0x52, 0x54, 0, 0xab, 0xcd, 0xef}, MTU: 9000}, netCheckCmd)
	checkNIC(t, c, "52:54:00:ab:cd:ef", 9000)
}

// TestVirtioNetGuestTAP is the same on a TAP the VMM creates, which is gone after
// the NIC is closed.
func TestVirtioNetGuestTAP(t *testing.T) {
	requireGuest(t)
	if ok, why := tap.CanCreate(); !ok {
		t.Skip("cannot create a TAP: " + why)
	}
	name := fmt.Sprintf("ptve%d", os.Getpid()%10000)
	c, nd := bootNIC(t, vmm.NIC{Tap: name, Queues: 2, MTU: 9000}, netCheckCmd)
	checkNIC(t, c, "52:54:00:12:34:56", 9000)
	require.NoError(t, nd.Close())
	assert.False(t, tap.Exists(name), "the TAP the VMM created is removed")
}
