package e2e

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/devices/testdev"
	"github.com/ptvmm/ptvmm/internal/testhost"
)

const (
	sysPCI         = "/sys/bus/pci/devices"
	uioWait        = 10 * time.Second // one interrupt's arrival
	pciCmdIntxMask = 1 << 10          // PCI_COMMAND_INTX_DISABLE
	// kmodGuestPath is where pciInitramfs puts our MSI-X driver when it was built.
	kmodGuestPath = "/lib/modules/ptvmm/" + testhost.TestdevKmod + ".ko"
)

// TestGuestPCIHelper runs inside TestPCIGuest's guest (only there). Every wait is
// bounded; a failed check fails this test, which the agent reports as a non-zero
// exit status.
func TestGuestPCIHelper(t *testing.T) {
	if os.Getenv(pciHelperEnv) == "" {
		t.Skip("runs only inside the guest of TestPCIGuest")
	}
	intxBDF, msixBDF := "", ""
	ents, err := os.ReadDir(sysPCI)
	require.NoError(t, err)
	for _, e := range ents {
		bdf := e.Name()
		if sysHex(t, bdf, "vendor") != testdev.VendorID || sysHex(t, bdf, "device") != testdev.DeviceID {
			continue
		}
		cfg, err := os.ReadFile(filepath.Join(sysPCI, bdf, "config"))
		require.NoError(t, err)
		require.GreaterOrEqual(t, len(cfg), 256, "root reads the whole config space")
		res := resources(t, bdf)
		pin := int(cfg[0x3d])
		say("pcihelper: dev %s pin %d msix %d bar0 %x %d bar2 %x %d\n",
			bdf, pin, msixTableSize(cfg), res[0][0], res[0][1], res[2][0], res[2][1])
		if pin == 1 {
			intxBDF = bdf
		}
		if msixTableSize(cfg) > 0 {
			msixBDF = bdf
		}
	}
	require.NotEmpty(t, intxBDF, "no INTx test device found")
	require.NotEmpty(t, msixBDF, "no MSI-X test device found")
	// Before uioTest: once uio_pci_generic has the device ID it would take
	// the MSI-X device too.
	if _, err := os.Stat(kmodGuestPath); err == nil {
		testdevMSIX(t, msixBDF, intxBDF)
	} else {
		say("pcihelper: no %s in the guest, MSI-X test device not driven\n", kmodGuestPath)
	}
	uioTest(t, intxBDF)
	msixTraffic(t)
}

// say prints a console line for the host side and waits until the tty sent it
// (tcdrain), so a kernel message our next step causes cannot land inside it.
func say(format string, args ...any) {
	fmt.Printf(format, args...)
	_ = unix.IoctlSetInt(1, unix.TCSBRK, 1) // arg 1: drain, not a break; fails harmlessly on a non-tty
}

// sysHex reads a sysfs file holding one hex number.
func sysHex(t *testing.T, bdf, name string) uint64 {
	b, err := os.ReadFile(filepath.Join(sysPCI, bdf, name))
	require.NoError(t, err)
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 0, 64)
	require.NoError(t, err, "%s/%s", bdf, name)
	return v
}

// resources returns (start, size) of the six BARs from the resource file.
func resources(t *testing.T, bdf string) [6][2]uint64 {
	b, err := os.ReadFile(filepath.Join(sysPCI, bdf, "resource"))
	require.NoError(t, err)
	var r [6][2]uint64
	for i, l := range strings.Split(string(b), "\n") {
		if i >= 6 {
			break
		}
		// "0x<start> 0x<end> 0x<flags>"; an absent BAR is all zeros.
		f := strings.Fields(l)
		if len(f) != 3 {
			continue
		}
		start, err1 := strconv.ParseUint(f[0], 0, 64)
		end, err2 := strconv.ParseUint(f[1], 0, 64)
		if err1 == nil && err2 == nil && end > start {
			r[i] = [2]uint64{start, end - start + 1}
		}
	}
	return r
}

// msixTableSize walks the capability list for MSI-X (0 if absent).
func msixTableSize(cfg []byte) int {
	if binary.LittleEndian.Uint16(cfg[6:])&(1<<4) == 0 {
		return 0
	}
	p := int(cfg[0x34]) &^ 3
	for hops := 0; p >= 0x40 && p < 255 && hops < 48; hops++ {
		if cfg[p] == 0x11 {
			return int(binary.LittleEndian.Uint16(cfg[p+2:])&0x7ff) + 1
		}
		p = int(cfg[p+1]) &^ 3
	}
	return 0
}

// uioDev is the INTx test device bound to uio_pci_generic.
type uioDev struct {
	t    *testing.T
	uio  int    // /dev/uioN
	cfg  int    // sysfs config file
	regs []byte // BAR0 through resource0
}

// The device takes aligned dword accesses only; on amd64 the Go compiler turns
// binary.LittleEndian's Uint32/PutUint32 into single 32-bit loads and stores.
func (u *uioDev) reg(off int) uint32       { return binary.LittleEndian.Uint32(u.regs[off:]) }
func (u *uioDev) setReg(off int, v uint32) { binary.LittleEndian.PutUint32(u.regs[off:], v) }

// unmask clears INTx disable the way uio_pci_generic expects user space to.
func (u *uioDev) unmask() {
	var b [2]byte
	_, err := unix.Pread(u.cfg, b[:], 4)
	require.NoError(u.t, err)
	cmd := binary.LittleEndian.Uint16(b[:]) &^ pciCmdIntxMask
	binary.LittleEndian.PutUint16(b[:], cmd)
	_, err = unix.Pwrite(u.cfg, b[:], 4)
	require.NoError(u.t, err)
}

// wait waits up to d for an interrupt and returns uio's total count, or -1.
func (u *uioDev) wait(d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return -1
		}
		pfd := []unix.PollFd{{Fd: int32(u.uio), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		require.NoError(u.t, err)
		if n == 0 {
			return -1
		}
		var b [4]byte
		_, err = unix.Read(u.uio, b[:])
		if err == unix.EINTR {
			continue
		}
		require.NoError(u.t, err)
		return int(binary.LittleEndian.Uint32(b[:]))
	}
}

// waitFor polls (bounded) for a condition that becomes true asynchronously.
func waitFor(t *testing.T, cond func() bool, what string) {
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		require.True(t, time.Now().Before(deadline), "timed out waiting for %s", what)
		<-tick.C
	}
}

// waitPath waits (bounded) for a path that appears asynchronously.
func waitPath(t *testing.T, p func() string, what string) string {
	var s string
	waitFor(t, func() bool { s = p(); return s != "" }, what)
	return s
}

// mapBAR0 maps a test device's registers through its sysfs resource0 file.
func mapBAR0(t *testing.T, bdf string) []byte {
	rfd, err := unix.Open(filepath.Join(sysPCI, bdf, "resource0"), unix.O_RDWR|unix.O_SYNC|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(rfd) // the mapping outlives the fd
	regs, err := unix.Mmap(rfd, 0, testdev.BAR0Size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	require.NoError(t, err, "mmap %s resource0", bdf)
	return regs
}

func uioTest(t *testing.T, bdf string) {
	id := fmt.Sprintf("%04x %04x", testdev.VendorID, testdev.DeviceID)
	require.NoError(t, os.WriteFile("/sys/bus/pci/drivers/uio_pci_generic/new_id", []byte(id), 0o200))
	name := waitPath(t, func() string {
		e, _ := os.ReadDir(filepath.Join(sysPCI, bdf, "uio"))
		if len(e) == 0 {
			return ""
		}
		return e[0].Name()
	}, bdf+" bound to uio_pci_generic")
	dev := waitPath(t, func() string {
		if _, err := os.Stat("/dev/" + name); err != nil {
			return ""
		}
		return "/dev/" + name
	}, "/dev/"+name)
	say("pcihelper: %s bound to uio_pci_generic as %s\n", bdf, dev)

	u := &uioDev{t: t}
	var err error
	u.uio, err = unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(u.uio)
	u.cfg, err = unix.Open(filepath.Join(sysPCI, bdf, "config"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(u.cfg)
	u.regs = mapBAR0(t, bdf)
	defer unix.Munmap(u.regs)
	require.Equal(t, uint32(testdev.Magic), u.reg(testdev.RegID), "BAR0 ID register through resource0")
	u.setReg(testdev.RegScratch, 0x5a5aa5a5)
	require.Equal(t, uint32(0x5a5aa5a5), u.reg(testdev.RegScratch), "scratch register")
	u.setReg(testdev.RegScratch, 0)

	want := 0
	for i := 0; i < uioRounds; i++ {
		u.unmask()
		u.setReg(testdev.RegRaise, 0)
		want++
		require.Equal(t, want, u.wait(uioWait), "uio count after RAISE %d", i+1)
		require.Equal(t, uint32(1), u.reg(testdev.RegAck), "level held until ACK")
		u.setReg(testdev.RegAck, 0)
	}
	// A level still up when user space unmasks is delivered again.
	u.unmask()
	u.setReg(testdev.RegRaise, 0)
	want++
	require.Equal(t, want, u.wait(uioWait), "uio count after the held RAISE")
	u.unmask()
	want++
	require.Equal(t, want, u.wait(uioWait), "uio count after unmasking a held level")
	u.setReg(testdev.RegAck, 0)
	// The host raises the next one.
	u.unmask()
	u.setReg(testdev.RegScratch, hostFireRequest)
	want++
	require.Equal(t, want, u.wait(uioWait), "uio count after the host's RaiseINTx")
	require.Equal(t, uint32(uioRounds+2), u.reg(testdev.RegCount), "device COUNT register")
	u.setReg(testdev.RegAck, 0)
	// Acknowledged and unmasked: nothing more may arrive.
	u.unmask()
	require.Equal(t, -1, u.wait(300*time.Millisecond), "no interrupt after the last ACK")
	say("pcihelper: uio interrupts %d\n", want)
}

// irqCount sums the per-CPU counts of the /proc/interrupts line naming irq (-1 if
// there is none) and returns the line.
func irqCount(t *testing.T, irq string) (int, string) {
	b, err := os.ReadFile("/proc/interrupts")
	require.NoError(t, err)
	return interruptLine(string(b), irq)
}

// interruptLine finds the line naming irq (its last field) in /proc/interrupts
// text and sums its per-CPU counts; -1 and "" if there is none.
func interruptLine(text, irq string) (int, string) {
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[len(f)-1] != irq {
			continue
		}
		sum := 0
		for _, s := range f[1:] {
			n, err := strconv.Atoi(s)
			if err != nil {
				break
			}
			sum += n
		}
		return sum, strings.TrimSpace(l)
	}
	return -1, ""
}

// msixTraffic pings the host side over virtio-net and checks that the RX queue's
// MSI-X vector counted the interrupts.
func msixTraffic(t *testing.T) {
	before, line := irqCount(t, "virtio0-input.0")
	require.GreaterOrEqual(t, before, 0, "no virtio0-input.0 vector in /proc/interrupts")
	require.Contains(t, line, "PCI-MSI", "virtio0-input.0 is not an MSI-X vector")
	for _, q := range []string{"virtio0-config", "virtio0-output.0"} {
		n, l := irqCount(t, q)
		require.GreaterOrEqual(t, n, 0, "no %s vector in /proc/interrupts", q)
		say("pcihelper: %s\n", l)
	}
	require.NoError(t, setIPv4("eth0", guestIP))
	guestPing(t, hostIP)
	after, line := irqCount(t, "virtio0-input.0")
	say("pcihelper: %s\n", line)
	say("pcihelper: virtio0-input.0 before %d after %d\n", before, after)
	require.Greater(t, after, before, "RX MSI-X vector count did not grow")
}

// testdevMSIX loads ptvmm_testdev (guest/kmod), which binds the MSI-X test
// device and requests each of its vectors as ptvmm-testdev-<N>. Vector v is
// raised v+1 times by the guest (RAISE register) and once by the host (Fire,
// asked for through SCRATCH); /proc/interrupts must count exactly that. Unloading
// the module must free the vectors, and its remove() logs the counts the
// interrupt handler saw, which must agree.
func testdevMSIX(t *testing.T, bdf, intxBDF string) {
	taint0 := tainted(t)
	f, err := os.Open(kmodGuestPath)
	require.NoError(t, err)
	err = unix.FinitModule(int(f.Fd()), "", 0)
	f.Close()
	require.NoError(t, err, "load %s", kmodGuestPath)
	// Unsigned and out of tree: the kernel loads it and adds taint flags E and O.
	say("pcihelper: %s loaded, kernel taint %#x before, %#x after\n", testhost.TestdevKmod, taint0, tainted(t))
	require.Equal(t, testhost.TestdevKmod, driverOf(bdf), "driver of the MSI-X test device %s", bdf)
	require.Empty(t, driverOf(intxBDF), "the INTx test device %s must stay unbound", intxBDF)

	regs := mapBAR0(t, bdf)
	defer unix.Munmap(regs)
	require.Equal(t, uint32(testdev.Magic), binary.LittleEndian.Uint32(regs[testdev.RegID:]), "BAR0 ID register")
	n := int(binary.LittleEndian.Uint32(regs[testdev.RegVectors:]))
	require.Equal(t, msixVectors, n, "VECTORS register")
	count0 := binary.LittleEndian.Uint32(regs[testdev.RegCount:])

	before := make([]int, n)
	for v := range n {
		c, line := irqCount(t, testdevVector(v))
		require.GreaterOrEqual(t, c, 0, "no %s in /proc/interrupts", testdevVector(v))
		require.Contains(t, line, "PCI-MSI", "%s is not an MSI-X vector", testdevVector(v))
		before[v] = c
	}
	total := 0
	for v := range n {
		for range v + 1 {
			binary.LittleEndian.PutUint32(regs[testdev.RegRaise:], uint32(v))
			total++
		}
	}
	// The host fires every vector once, then clears SCRATCH.
	binary.LittleEndian.PutUint32(regs[testdev.RegScratch:], hostFireRequest)
	waitFor(t, func() bool { return binary.LittleEndian.Uint32(regs[testdev.RegScratch:]) == 0 },
		"the host to fire the MSI-X vectors")
	total += n
	want := func(v int) int { return before[v] + v + 1 + 1 }
	var b []byte
	waitFor(t, func() bool {
		b, err = os.ReadFile("/proc/interrupts")
		require.NoError(t, err)
		for v := range n {
			if c, _ := interruptLine(string(b), testdevVector(v)); c < want(v) {
				return false
			}
		}
		return true
	}, "the MSI-X test device's interrupts")
	require.Equal(t, count0+uint32(total), binary.LittleEndian.Uint32(regs[testdev.RegCount:]), "device COUNT register")
	after := make([]int, n)
	for v := range n {
		var line string
		after[v], line = interruptLine(string(b), testdevVector(v))
		say("pcihelper: %s\n", line)
	}

	// remove() frees the vectors and logs what the handler counted.
	require.NoError(t, unix.DeleteModule(testhost.TestdevKmod, unix.O_NONBLOCK), "unload %s", testhost.TestdevKmod)
	for v := range n {
		c, line := irqCount(t, testdevVector(v))
		require.Equal(t, -1, c, "%s still in /proc/interrupts after unload: %s", testdevVector(v), line)
	}
	handled := handlerCounts(kernelLog(t), bdf)
	for v := range n {
		say("pcihelper: testdev-msix vector %d before %d after %d guest %d host 1 handler %d\n",
			v, before[v], after[v], v+1, handled[v])
	}
	for v := range n {
		require.Equal(t, want(v), after[v], "%s count", testdevVector(v))
		h, ok := handled[v]
		require.True(t, ok, "no handler count logged for vector %d", v)
		require.Equal(t, after[v], h, "vector %d: handler count vs /proc/interrupts", v)
	}
}

// testdevVector is the interrupt name ptvmm_testdev gives vector v.
func testdevVector(v int) string { return fmt.Sprintf("ptvmm-testdev-%d", v) }

// driverOf is the name of the driver bound to a PCI device ("" if none).
func driverOf(bdf string) string {
	l, err := os.Readlink(filepath.Join(sysPCI, bdf, "driver"))
	if err != nil {
		return ""
	}
	return filepath.Base(l)
}

// kernelLog reads the kernel's log buffer.
func kernelLog(t *testing.T) string {
	n, err := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil)
	require.NoError(t, err)
	buf := make([]byte, n)
	n, err = unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	require.NoError(t, err)
	return string(buf[:n])
}

// handlerCounts reads the "vector <v>: <n> interrupts" lines ptvmm_testdev's
// remove() logs for device bdf; the last line for a vector wins.
func handlerCounts(klog, bdf string) map[int]int {
	m := map[int]int{}
	prefix := testhost.TestdevKmod + " " + bdf + ": vector "
	for _, l := range strings.Split(klog, "\n") {
		i := strings.Index(l, prefix)
		if i < 0 {
			continue
		}
		var v, c int
		if n, _ := fmt.Sscanf(l[i+len(prefix):], "%d: %d interrupts", &v, &c); n == 2 {
			m[v] = c
		}
	}
	return m
}

// tainted reads the kernel's taint flags.
func tainted(t *testing.T) uint64 {
	b, err := os.ReadFile("/proc/sys/kernel/tainted")
	require.NoError(t, err)
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	require.NoError(t, err)
	return v
}
