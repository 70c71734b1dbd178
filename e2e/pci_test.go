package e2e

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/devices/testdev"
	"github.com/ptvmm/ptvmm/guest/initramfs"
	"github.com/ptvmm/ptvmm/internal/testhost"
	"github.com/ptvmm/ptvmm/vmm"
)

const (
	pciHelperEnv = "PTVMM_PCIHELPER"
	pciHelperCmd = "/bin/pcihelper -test.run=^TestGuestPCIHelper$ -test.v"
	// hostFireRequest in a test device's SCRATCH register asks the host side to
	// raise INTx itself (testdev.RaiseINTx) or, on the MSI-X device, to fire every
	// vector once (testdev.Fire), so the host-side triggers are covered too.
	hostFireRequest = 0x484f5354
	// uioRounds are the guest-triggered INTx interrupts with an ACK each; then one
	// level held across an unmask (two interrupts) and one host-raised interrupt.
	uioRounds   = 5
	uioExpected = uioRounds + 2 + 1
	msixVectors = 4
)

// pciInitramfs is a guest initramfs that loads the virtio-net and uio groups at
// boot and holds this test binary as /bin/pcihelper and, when `make kernel` built
// it, our MSI-X driver (guest/kmod) for the helper to load. kmodMissing says why
// the driver is absent ("" if it is there).
func pciInitramfs(t *testing.T, dir string) (img, kmodMissing string) {
	t.Helper()
	if _, err := os.Stat("/init"); err != nil {
		t.Skip("no agent at /init to reuse for the guest (not in the test host)")
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	k, err := testhost.LoadKernel(filepath.Join(dir, testhost.AssetKernelDir))
	require.NoError(t, err)
	mods, err := k.Modules("virtio-net", "uio")
	require.NoError(t, err)
	spec := initramfs.Spec{Init: "/init", Env: []string{pciHelperEnv + "=1"}}
	for _, m := range mods {
		spec.Modules = append(spec.Modules, k.ModulePath(m))
	}
	spec.Files = append(spec.Files, initramfs.File{Guest: "/bin/pcihelper", Host: exe, Mode: 0o755})
	// Not in the load list: the helper loads it after checking the devices.
	kmodMissing = testhost.KmodMissing(k, testhost.TestdevKmod)
	if kmodMissing == "" {
		spec.Files = append(spec.Files, initramfs.File{Guest: kmodGuestPath, Host: k.ModulePath(testhost.TestdevKmod), Mode: 0o644})
	}
	img = filepath.Join(t.TempDir(), "guest.cpio")
	require.NoError(t, initramfs.BuildFile(img, spec))
	return img, kmodMissing
}

// TestPCIGuest boots a Linux guest with two test devices (one INTx, one with
// MSI-X vectors) and a virtio-net NIC. The guest helper (TestGuestPCIHelper):
//   - finds both test devices and prints their BARs and MSI-X table size, which
//     must be what the VMM assigned;
//   - loads our driver ptvmm_testdev (guest/kmod; no in-tree driver enables MSI-X
//     on a device it does not know), which binds only the MSI-X test device and
//     enables all its vectors; each shows in /proc/interrupts as PCI-MSI(X)
//     ptvmm-testdev-<N> and counts exactly the interrupts raised by MMIO writes
//     to the device and fired by the host; unloading frees them again;
//   - binds uio_pci_generic to the test device ID through new_id and takes INTx
//     interrupts through /dev/uioN: five raised by MMIO writes to the device, a
//     level held across an unmask (re-asserted by the VMM), one raised by the host;
//   - proves MSI-X on the virtio-net device too: its vectors are in
//     /proc/interrupts and the RX vector's count grows while it pings the host side.
//
// The host side checks the BARs, the console lines and the device counters,
// including the INTx resample (EOI) events. Without ptvmm_testdev.ko (`make
// kernel` builds it when the kernel's headers package is installed) the MSI-X
// test device part is the subtest testdev-msix, which then skips saying why.
func TestPCIGuest(t *testing.T) {
	dir := requireGuest(t)
	img, kmodMissing := pciInitramfs(t, dir)

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fds[1])
	h := &hostSide{t: t, fd: fds[1], stop: make(chan struct{})}
	h.wg.Add(1)
	go h.run()
	defer h.close()

	g := newLibGuest(t, vmm.Config{
		Kernel:  filepath.Join(dir, testhost.AssetKernelDir, "vmlinuz"),
		Initrd:  img,
		Cmdline: testhost.GuestCmdline(pciHelperCmd),
		MemSize: 512 << 20,
		// One vCPU: nothing here needs two, and under the QEMU TCG test host every
		// nested vCPU adds to the chance of hitting its nested-SVM flakes.
		CPUs: 1,
	})
	c, watch, vm := g.c, g.watch, g.vm
	// Devices are closed before the VM: their irqfds live on the VM fd.
	intx, err := testdev.Add(vm, 0, testdev.Config{})
	require.NoError(t, err)
	defer func() { assert.NoError(t, intx.Close()) }()
	msix, err := testdev.Add(vm, 0, testdev.Config{Vectors: msixVectors})
	require.NoError(t, err)
	defer func() { assert.NoError(t, msix.Close()) }()
	nd, err := vm.AddNIC(0, vmm.NIC{Ports: []backends.Port{seqPort(fds[0])}, PortsVnetHdr: true, MAC: guestMAC})
	require.NoError(t, err)
	defer func() { assert.NoError(t, nd.Close()) }()

	// Answer the guest's requests for host-raised interrupts.
	stopFire := make(chan struct{})
	var fireWG sync.WaitGroup
	var hostFired, msixFired, fireErr = 0, 0, error(nil)
	fireWG.Add(1)
	go func() {
		defer fireWG.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		var reg [4]byte
		for {
			select {
			case <-stopFire:
				return
			case <-tick.C:
			}
			intx.Read(testdev.RegScratch, reg[:])
			if binary.LittleEndian.Uint32(reg[:]) == hostFireRequest {
				intx.Write(testdev.RegScratch, make([]byte, 4))
				if fireErr = intx.RaiseINTx(); fireErr == nil {
					hostFired++
				}
			}
			msix.Read(testdev.RegScratch, reg[:])
			if binary.LittleEndian.Uint32(reg[:]) == hostFireRequest {
				for v := range msix.Vectors() {
					if err := msix.Fire(v); err != nil {
						fireErr = err
					} else {
						msixFired++
					}
				}
				// Cleared after firing: the guest waits for this.
				msix.Write(testdev.RegScratch, make([]byte, 4))
			}
		}
	}()

	runErr := g.run()
	close(stopFire)
	fireWG.Wait()
	h.close()
	elapsed := time.Since(c.start)
	fail := func() string { return failHint + "last console lines:\n" + c.tail(80) }
	require.NoError(t, runErr, fail())
	status, ok := watch.ExitStatus()
	require.True(t, ok, "no exit status; %s", fail())
	require.Equal(t, 0, status, "guest helper failed; %s", fail())
	t.Logf("inner guest: agent ready %.2fs, done %.2fs", c.ready.Seconds(), elapsed.Seconds())

	out := c.text()
	devs := parseDevLines(out)
	for _, p := range []*testdev.Plugged{intx, msix} {
		bdf := fmt.Sprintf("0000:00:%02x.0", p.Function.Slot())
		g, found := devs[bdf]
		if !assert.True(t, found, "guest did not list test device %s; %s", bdf, fail()) {
			continue
		}
		a0, m0 := p.Function.BARAddr(0)
		assert.True(t, m0, "%s BAR0 decoding", bdf)
		assert.Equal(t, a0, g.bar[0], "%s BAR0 address: guest vs VMM", bdf)
		assert.Equal(t, uint64(testdev.BAR0Size), g.size[0], "%s BAR0 size", bdf)
		if p.Vectors() > 0 {
			a2, m2 := p.Function.BARAddr(2)
			assert.True(t, m2, "%s BAR2 decoding", bdf)
			assert.Equal(t, a2, g.bar[2], "%s BAR2 address: guest vs VMM", bdf)
			assert.Equal(t, uint64(testdev.BAR2Size), g.size[2], "%s BAR2 size", bdf)
			assert.Equal(t, msixVectors, g.msix, "%s MSI-X table size seen by the guest", bdf)
			assert.Equal(t, 0, g.pin, "%s has no INTx pin", bdf)
		} else {
			assert.Equal(t, 1, g.pin, "%s INTx pin A", bdf)
			assert.Equal(t, 0, g.msix, "%s has no MSI-X", bdf)
			assert.Zero(t, g.size[2], "%s has no BAR2", bdf)
		}
		t.Logf("%s: BAR0 VMM %#x guest %#x, BAR2 guest %#x, msix %d, pin %d", bdf, a0, g.bar[0], g.bar[2], g.msix, g.pin)
	}

	assert.Contains(t, out, fmt.Sprintf("pcihelper: uio interrupts %d", uioExpected), fail())
	st := intx.Stats()
	t.Logf("INTx test device counters: %+v (host raised %d)", st, hostFired)
	assert.NoError(t, fireErr)
	assert.Equal(t, 1, hostFired, "host-raised interrupts")
	assert.Equal(t, uint64(uioRounds+2), st.Raised, "RAISE writes plus the host's RaiseINTx")
	assert.Equal(t, uint64(uioRounds+2), st.Acked, "ACK writes")
	// Every interrupt the guest took was EOI'd: KVM de-asserted the line and
	// signalled the resample eventfd.
	assert.GreaterOrEqual(t, st.Resamples, uint64(uioExpected), "INTx resample (EOI) events")
	assert.Zero(t, st.Errors)
	assert.Zero(t, msix.Stats().Errors)

	before, after := -1, -1
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, "pcihelper: virtio0-input.0 "); i >= 0 {
			fmt.Sscanf(l[i:], "pcihelper: virtio0-input.0 before %d after %d", &before, &after)
		}
		if strings.Contains(l, "pcihelper:") {
			t.Log(strings.TrimSpace(l))
		}
	}
	assert.GreaterOrEqual(t, before, 0, "no virtio0-input.0 MSI-X line; %s", fail())
	assert.Greater(t, after, before, "RX MSI-X vector count did not grow with traffic")
	assert.NotZero(t, nd.Net.Stats()[0].RxPackets)

	t.Run("testdev-msix", func(t *testing.T) {
		if kmodMissing != "" {
			assert.Zero(t, msixFired, "host fired MSI-X vectors without the driver")
			t.Skip(kmodMissing)
		}
		vecs := parseVectorLines(out)
		require.Len(t, vecs, msixVectors, "testdev-msix lines; %s", fail())
		guestRaised := 0
		for v := range msixVectors {
			l := vecs[v]
			// In /proc/interrupts with the exact count, and the driver's own handler saw each.
			assert.Equal(t, l.guest+l.host, l.after-l.before, "vector %d: interrupts counted vs raised", v)
			assert.Equal(t, v+1, l.guest, "vector %d: guest RAISE writes", v)
			assert.Equal(t, 1, l.host, "vector %d: host Fire calls", v)
			assert.Equal(t, l.after, l.handler, "vector %d: handler count", v)
			guestRaised += l.guest
		}
		assert.Contains(t, out, "ptvmm-testdev-0", fail())
		assert.Equal(t, msixVectors, msixFired, "host Fire calls")
		st := msix.Stats()
		t.Logf("MSI-X test device counters: %+v (host fired %d)", st, msixFired)
		assert.Equal(t, uint64(guestRaised+msixFired), st.Raised, "RAISE writes plus the host's Fire calls")
		assert.Zero(t, st.Errors)
	})
}

// vectorLine is the helper's account of one MSI-X test device vector: its
// /proc/interrupts count before and after, the interrupts raised by the guest
// and the host, and what the driver's handler counted.
type vectorLine struct{ before, after, guest, host, handler int }

// parseVectorLines reads the helper's "pcihelper: testdev-msix vector" lines.
func parseVectorLines(out string) map[int]vectorLine {
	m := map[int]vectorLine{}
	for _, l := range strings.Split(out, "\n") {
		i := strings.Index(l, "pcihelper: testdev-msix vector ")
		if i < 0 {
			continue
		}
		var v int
		var d vectorLine
		n, _ := fmt.Sscanf(l[i:], "pcihelper: testdev-msix vector %d before %d after %d guest %d host %d handler %d",
			&v, &d.before, &d.after, &d.guest, &d.host, &d.handler)
		if n == 6 {
			m[v] = d
		}
	}
	return m
}

// guestDev is what the guest reported about one test device.
type guestDev struct {
	pin, msix int
	bar, size [6]uint64
}

// parseDevLines reads the helper's "pcihelper: dev" lines.
func parseDevLines(out string) map[string]guestDev {
	m := map[string]guestDev{}
	for _, l := range strings.Split(out, "\n") {
		i := strings.Index(l, "pcihelper: dev ")
		if i < 0 {
			continue
		}
		var bdf string
		var d guestDev
		n, _ := fmt.Sscanf(l[i:], "pcihelper: dev %s pin %d msix %d bar0 %x %d bar2 %x %d",
			&bdf, &d.pin, &d.msix, &d.bar[0], &d.size[0], &d.bar[2], &d.size[2])
		if n == 7 {
			m[bdf] = d
		}
	}
	return m
}

// The parsers below read text from a real run of TestPCIGuest.

func TestInterruptLine(t *testing.T) {
	text := `           CPU0       
  0:         37   IO-APIC   2-edge      timer
 31:          2   PCI-MSI 32768-edge      ptvmm-testdev-0
 32:         13   PCI-MSI 32769-edge      ptvmm-testdev-1
NMI:          0   Non-maskable interrupts
`
	n, l := interruptLine(text, "ptvmm-testdev-1")
	assert.Equal(t, 13, n)
	assert.Equal(t, "32:         13   PCI-MSI 32769-edge      ptvmm-testdev-1", l)
	n, _ = interruptLine(text, "ptvmm-testdev-0")
	assert.Equal(t, 2, n)
	n, l = interruptLine(text, "ptvmm-testdev-2")
	assert.Equal(t, -1, n)
	assert.Empty(t, l)
	// Two CPUs are summed.
	n, _ = interruptLine(" 29:          7          5   PCI-MSI 49153-edge      virtio0-input.0\n", "virtio0-input.0")
	assert.Equal(t, 12, n)
}

func TestHandlerCounts(t *testing.T) {
	klog := `<6>[    8.818268] ptvmm_testdev 0000:00:02.0: 4 MSI-X vectors enabled
<6>[    9.188602] ptvmm_testdev 0000:00:02.0: vector 0: 2 interrupts
<6>[    9.198160] ptvmm_testdev 0000:00:02.0: vector 1: 3 interrupts
<6>[    9.198161] ptvmm_testdev 0000:00:03.0: vector 1: 9 interrupts
<6>[    9.198162] ptvmm_testdev 0000:00:02.0: vector 2: bogus interrupts
`
	assert.Equal(t, map[int]int{0: 2, 1: 3}, handlerCounts(klog, "0000:00:02.0"))
	assert.Empty(t, handlerCounts(klog, "0000:00:04.0"))
}

func TestParseVectorLines(t *testing.T) {
	out := `pcihelper: testdev-msix vector 0 before 0 after 2 guest 1 host 1 handler 2
junk pcihelper: testdev-msix vector 3 before 1 after 6 guest 4 host 1 handler 6
pcihelper: testdev-msix vector 2 before 0 after 4 guest 3 host 1
pcihelper: dev 0000:00:02.0 pin 0 msix 4 bar0 c0001000 4096 bar2 c0002000 4096
`
	assert.Equal(t, map[int]vectorLine{
		0: {before: 0, after: 2, guest: 1, host: 1, handler: 2},
		3: {before: 1, after: 6, guest: 4, host: 1, handler: 6},
	}, parseVectorLines(out))
}

func TestKmodMissing(t *testing.T) {
	k := &testhost.Kernel{Dir: t.TempDir(), Version: "6.1.0-test"}
	assert.Equal(t, "ptvmm_testdev.ko not built: install linux-headers-6.1.0-test, then run `make kernel`",
		testhost.KmodMissing(k, testhost.TestdevKmod))
	require.NoError(t, os.MkdirAll(filepath.Join(k.Dir, "modules"), 0o755))
	require.NoError(t, os.WriteFile(k.ModulePath(testhost.TestdevKmod), []byte("ko"), 0o644))
	assert.Empty(t, testhost.KmodMissing(k, testhost.TestdevKmod))
}
