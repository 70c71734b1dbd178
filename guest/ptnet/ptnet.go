//go:build linux

package ptnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptvmm/ptvmm/backends/netmap"
	"golang.org/x/sys/unix"
)

// ErrClosed is returned by a Device's methods after Close.
var ErrClosed = errors.New("ptnet: device closed")

// Options says which ptnet to open and how.
type Options struct {
	// Dev is the device node; "" means the first ptnet bound to ptvmm_ptnet.
	Dev string
	// Sysfs is where sysfs is mounted; "" means /sys.
	Sysfs string
	// Cached maps BAR1 write-back (what a driver wants); false maps it
	// uncached, which is correct but slow, to measure the difference.
	Cached bool
	// VnetHdr negotiates PTNETMAP_F_VNET_HDR and VNET_HDR_LEN 12: every frame
	// in the rings then starts with a 12-byte virtio-net header.
	VnetHdr bool
}

// waitSlice bounds one blocking WAIT ioctl, so that Close is not held up
// longer than this by a waiter.
const waitSlice = 100 * time.Millisecond

// Device is an open ptnet with PTCTL CREATE done: the host loop runs and the
// DriverConfig is ready for netmap.NewDriver.
//
// Concurrency: Kick and Wait may be called from any goroutine, also
// concurrently (one waiter per ring at a time); Close waits for running
// Kick/Wait calls, makes later ones return ErrClosed, and unmaps the memory:
// call it only after every user of DriverConfig's Mem and CSB has stopped.
type Device struct {
	fd      int
	info    Info
	dev     string
	memdev  string // PCI address of the paired memdev, "" if not found in sysfs
	cached  bool
	hdrLen  int
	bar1    []byte // the mapping (page-rounded)
	csbMem  []byte // two pages
	regs    []byte // BAR0 page, nil when BAR0 is I/O
	csb     *netmap.CSB
	seen    []atomic.Uint64 // per ring: interrupt count at the last Wait that saw one
	mu      sync.RWMutex    // Kick and Wait hold it shared, Close exclusively
	closed  atomic.Bool
	created bool
}

// Open opens a ptnet, maps BAR1, the CSB and (if MMIO) the registers,
// negotiates features and the virtio-net header, primes the CSB as netmap's
// guest driver does and issues PTCTL CREATE (SPECS 3.5, 3.8).
func Open(o Options) (*Device, error) {
	sysfs := o.Sysfs
	if sysfs == "" {
		sysfs = "/sys"
	}
	dev := o.Dev
	if dev == "" {
		var err error
		if dev, err = DefaultDevice(sysfs); err != nil {
			return nil, err
		}
	}
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("ptnet: open %s: %w", dev, err)
	}
	d := &Device{fd: fd, dev: dev, cached: o.Cached}
	ok := false
	defer func() {
		if !ok {
			d.release()
		}
	}()
	if d.info, err = d.readInfo(); err != nil {
		return nil, err
	}
	if err := d.info.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", dev, err)
	}
	if d.info.HostMemID&0xffff != d.info.MemID&0xffff {
		return nil, fmt.Errorf("ptnet: %s: paired memdev has MEMID %d, HOSTMEMID is %d", dev, d.info.MemID, d.info.HostMemID)
	}
	if devs, err := Find(sysfs); err == nil {
		if m, found := memdevAt(devs, d.info.Bar1Phys); found {
			d.memdev = m.Addr
		}
	}
	if err := d.mapAll(o.Cached); err != nil {
		return nil, err
	}
	if err := d.negotiate(o.VnetHdr); err != nil {
		return nil, err
	}
	n := d.info.NumRings()
	// What netmap's guest driver does before CREATE (SPECS 3.5 step 3): RX
	// rings want interrupts from the start, TX rings only when they block;
	// the host is asked to take kicks until its loop says otherwise.
	for i := range n {
		rx := uint32(0)
		if i >= int(d.info.NumTxRings) {
			rx = 1
		}
		d.csb.SetApplNeedKick(i, rx)
		d.csb.SetKernNeedKick(i, 1)
	}
	d.seen = make([]atomic.Uint64, n)
	counts, err := d.InterruptCounts()
	if err != nil {
		return nil, err
	}
	for i, c := range counts {
		d.seen[i].Store(c)
	}
	res, err := d.regWrite(RegPtctl, PtctlCreate)
	if err != nil {
		return nil, fmt.Errorf("ptnet: PTCTL CREATE: %w", err)
	}
	if res != 0 {
		return nil, fmt.Errorf("ptnet: %s: PTCTL CREATE refused: %w", dev, unix.Errno(res))
	}
	d.created = true
	ok = true
	return d, nil
}

func (d *Device) readInfo() (Info, error) {
	b := make([]byte, infoSize)
	if err := ioctlBuf(d.fd, iocInfo, b); err != nil {
		return Info{}, fmt.Errorf("ptnet: %s: INFO: %w", d.dev, err)
	}
	return decodeInfo(b)
}

func (d *Device) mapAll(cached bool) error {
	page := uint64(unix.Getpagesize())
	size := (d.info.MemSize + page - 1) &^ (page - 1)
	off := int64(MmapBar1UC)
	if cached {
		off = MmapBar1WB
	}
	var err error
	if d.bar1, err = unix.Mmap(d.fd, off, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return fmt.Errorf("ptnet: map BAR1 (%d bytes): %w", size, err)
	}
	if d.csbMem, err = unix.Mmap(d.fd, MmapCSB, 2*int(page), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return fmt.Errorf("ptnet: map CSB: %w", err)
	}
	if d.csb, err = netmap.NewCSB(d.csbMem[:page], d.csbMem[page:], d.info.NumRings()); err != nil {
		return fmt.Errorf("ptnet: %w", err)
	}
	if d.info.Flags&FlagRegsMmap != 0 {
		if d.regs, err = unix.Mmap(d.fd, MmapRegs, int(page), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
			return fmt.Errorf("ptnet: map BAR0: %w", err)
		}
	}
	return nil
}

// negotiate does PTFEAT and VNET_HDR_LEN, each a write then a read back.
func (d *Device) negotiate(vnetHdr bool) error {
	want, hdr := uint32(0), uint32(0)
	if vnetHdr {
		want, hdr = FeatVnetHdr, VnetHdrLen
	}
	got, err := d.regWrite(RegPtfeat, want)
	if err != nil {
		return fmt.Errorf("ptnet: PTFEAT: %w", err)
	}
	if got&want != want {
		return fmt.Errorf("ptnet: %s: the host does not offer the virtio-net header (PTFEAT %#x)", d.dev, got)
	}
	if got, err = d.regWrite(RegVnetHdrLen, hdr); err != nil {
		return fmt.Errorf("ptnet: VNET_HDR_LEN: %w", err)
	}
	if got != hdr {
		return fmt.Errorf("ptnet: %s: VNET_HDR_LEN %d refused (reads %d)", d.dev, hdr, got)
	}
	d.hdrLen = int(hdr)
	return nil
}

// regWrite writes a register through the module and returns the value read
// back (for PTFEAT, PTCTL and VNET_HDR_LEN).
func (d *Device) regWrite(off, val uint32) (uint32, error) {
	b := encodeReg(off, val)
	if err := ioctlBuf(d.fd, iocRegWrite, b); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[4:]), nil
}

// ReadReg reads a ptnet register (a 4-byte aligned offset below 68): a load
// from the mapped BAR0, or an ioctl when BAR0 is I/O space.
func (d *Device) ReadReg(off uint32) (uint32, error) {
	if off%4 != 0 || off >= regEnd {
		return 0, fmt.Errorf("ptnet: register %d: want a multiple of 4 below %d", off, regEnd)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed.Load() {
		return 0, ErrClosed
	}
	if d.regs != nil {
		return mmioRead32(d.regs, off), nil
	}
	b := encodeReg(off, 0)
	if err := ioctlBuf(d.fd, iocRegRead, b); err != nil {
		return 0, fmt.Errorf("ptnet: read register %d: %w", off, err)
	}
	return binary.LittleEndian.Uint32(b[4:]), nil
}

// DriverConfig is the driver side's view of this device, for
// netmap.NewDriver: Mem is BAR1 (MEMSIZE bytes), Nifp NIFP_OFS. After
// Close it is the zero DriverConfig.
func (d *Device) DriverConfig() netmap.DriverConfig {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.bar1 == nil {
		return netmap.DriverConfig{}
	}
	return netmap.DriverConfig{
		Mem:  d.bar1[:d.info.MemSize],
		Nifp: uint64(d.info.NifpOfs),
		CSB:  d.csb,
		Kick: d.Kick,
		Wait: d.Wait,
	}
}

// Info is what the module reported at Open.
func (d *Device) Info() Info { return d.info }

// Node is the device node opened.
func (d *Device) Node() string { return d.dev }

// Memdev is the PCI address of the memdev whose BAR1 is mapped ("" when
// sysfs did not show it).
func (d *Device) Memdev() string { return d.memdev }

// Cached says whether BAR1 is mapped write-back.
func (d *Device) Cached() bool { return d.cached }

// RegsMapped says whether kicks are plain stores to a mapped BAR0 (true) or
// ioctls (an I/O BAR0).
func (d *Device) RegsMapped() bool { return d.regs != nil }

// VnetHdrLen is the virtio-net header length in front of every frame: 0 or 12.
func (d *Device) VnetHdrLen() int { return d.hdrLen }

// Kick rings the doorbell of CSB ring i (TX rings first, then RX).
func (d *Device) Kick(ring int) error {
	if ring < 0 || ring >= len(d.seen) {
		return fmt.Errorf("ptnet: kick ring %d of %d", ring, len(d.seen))
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed.Load() {
		return ErrClosed
	}
	return d.kickLocked(ring)
}

// kickLocked writes KICK(ring); the caller holds mu (either way).
func (d *Device) kickLocked(ring int) error {
	off := uint32(RegKickBase + 4*ring)
	if d.regs != nil {
		mmioWrite32(d.regs, off, 1)
		return nil
	}
	if _, err := d.regWrite(off, 1); err != nil {
		return fmt.Errorf("ptnet: kick ring %d: %w", ring, err)
	}
	return nil
}

// Wait blocks until ring i's interrupt arrives (true) or timeout passes
// (false); timeout < 0 waits without limit, 0 only checks. Any interrupt of
// the ring since the previous Wait that returned true counts, so one that
// arrives between arming appl_need_kick and the call is not lost.
func (d *Device) Wait(ring int, timeout time.Duration) (bool, error) {
	if ring < 0 || ring >= len(d.seen) {
		return false, fmt.Errorf("ptnet: wait ring %d of %d", ring, len(d.seen))
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	deadline := time.Now().Add(timeout)
	for {
		if d.closed.Load() {
			return false, ErrClosed
		}
		slice := waitSlice
		if timeout >= 0 {
			slice = min(slice, max(time.Until(deadline), 0))
		}
		b := encodeWait(uint32(ring), int64(slice), d.seen[ring].Load())
		err := ioctlBuf(d.fd, iocWait, b)
		switch {
		case err == nil:
			d.seen[ring].Store(binary.LittleEndian.Uint64(b[16:]))
			return true, nil
		case errors.Is(err, unix.ETIMEDOUT), errors.Is(err, unix.EINTR):
		default:
			return false, fmt.Errorf("ptnet: wait ring %d: %w", ring, err)
		}
		if timeout >= 0 && !time.Now().Before(deadline) {
			return false, nil
		}
	}
}

// InterruptCounts are the interrupts taken per CSB ring since the module
// bound the device.
func (d *Device) InterruptCounts() ([]uint64, error) {
	b := make([]byte, 8*d.info.NumRings())
	n, err := unix.Read(d.fd, b)
	if err != nil {
		return nil, fmt.Errorf("ptnet: read interrupt counts: %w", err)
	}
	out := make([]uint64, n/8)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	return out, nil
}

// flushLimit bounds how long Close waits for the host loop to take what the
// rings released.
const flushLimit = 100 * time.Millisecond

// flushRings hands the host loop what the rings published but it has not
// synced yet (atok head ahead of ktoa hwcur): RX slots released after the
// last frame came (an RX loop asks for no kick then, so it never looked) and
// TX frames not sent. DELETE stops the loop, and a later CREATE starts the
// rings from the host's state: unflushed RX slots would be delivered again.
// It kicks those rings and waits, with short sleeps, up to limit for hwcur to
// catch up; it returns how many rings did not.
func flushRings(c *netmap.CSB, n int, kick func(int) error, limit time.Duration) int {
	behind := func() []int {
		var out []int
		for i := range n {
			if c.HwCur(i) != c.Head(i) {
				out = append(out, i)
			}
		}
		return out
	}
	rings := behind()
	for _, i := range rings {
		_ = kick(i) // a failed kick shows as a ring still behind
	}
	end := time.Now().Add(limit)
	for pause := 50 * time.Microsecond; len(rings) > 0 && time.Now().Before(end); pause = min(2*pause, 10*time.Millisecond) {
		time.Sleep(pause)
		rings = behind()
	}
	return len(rings)
}

// Close flushes the rings (see flushRings), stops the host loop (PTCTL
// DELETE), unmaps everything and closes the device; the module clears the
// CSB registers. Idempotent.
func (d *Device) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if d.created {
		// Best effort: a host that does not catch up in time only costs the
		// next session frames seen twice (RX) or lost (TX).
		flushRings(d.csb, d.info.NumRings(), d.kickLocked, flushLimit)
		// As netmap's driver on unregister: every ring asks for interrupts.
		for i := range d.info.NumRings() {
			d.csb.SetApplNeedKick(i, 1)
		}
		res, err := d.regWrite(RegPtctl, PtctlDelete)
		if err == nil && res != 0 {
			err = unix.Errno(res)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("ptnet: PTCTL DELETE: %w", err))
		}
		d.created = false
	}
	errs = append(errs, d.release())
	return errors.Join(errs...)
}

// release unmaps and closes, whatever was set up.
func (d *Device) release() error {
	var errs []error
	for _, m := range []*[]byte{&d.bar1, &d.csbMem, &d.regs} {
		if *m != nil {
			if err := unix.Munmap(*m); err != nil {
				errs = append(errs, fmt.Errorf("ptnet: unmap: %w", err))
			}
			*m = nil
		}
	}
	if d.fd >= 0 {
		if err := unix.Close(d.fd); err != nil {
			errs = append(errs, fmt.Errorf("ptnet: close: %w", err))
		}
		d.fd = -1
	}
	return errors.Join(errs...)
}
