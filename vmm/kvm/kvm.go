package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// DevicePath is the KVM device node.
const DevicePath = "/dev/kvm"

// System is an open /dev/kvm.
type System struct {
	fd       int
	mmapSize int
}

// Open opens /dev/kvm and checks the API version.
func Open() (*System, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: open %s: %w", DevicePath, err)
	}
	s := &System{fd: fd}
	v, err := ioctl(fd, kvmGetAPIVersion, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kvm: KVM_GET_API_VERSION: %w", err)
	}
	if v != APIVersion {
		unix.Close(fd)
		return nil, fmt.Errorf("kvm: API version %d, want %d", v, APIVersion)
	}
	n, err := ioctl(fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kvm: KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	if n < runPageMinSize {
		unix.Close(fd)
		return nil, fmt.Errorf("kvm: vCPU mmap size %d is smaller than struct kvm_run", n)
	}
	s.mmapSize = int(n)
	return s, nil
}

// Available reports whether /dev/kvm exists and can be opened read-write, and if not,
// why (for skipping tests and for user messages).
func Available() error {
	if _, err := os.Stat(DevicePath); err != nil {
		return fmt.Errorf("kvm: %s: %w", DevicePath, err)
	}
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("kvm: open %s: %w", DevicePath, err)
	}
	unix.Close(fd)
	return nil
}

// Close closes the system fd. VMs created from it stay valid.
func (s *System) Close() error { return unix.Close(s.fd) }

// CheckExtension returns the KVM_CHECK_EXTENSION value for cap (0: unsupported).
func (s *System) CheckExtension(cap int) (int, error) {
	r, err := ioctl(s.fd, kvmCheckExtension, uintptr(cap))
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_CHECK_EXTENSION %d: %w", cap, err)
	}
	return int(r), nil
}

// VCPUMmapSize is the size of each vCPU's shared kvm_run mapping.
func (s *System) VCPUMmapSize() int { return s.mmapSize }

// SupportedCPUID returns the CPUID leaves KVM can expose on this host.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := 128; n <= 4096; n *= 2 {
		buf := make([]byte, cpuidHeaderSize+n*cpuidEntrySize)
		binary.LittleEndian.PutUint32(buf, uint32(n))
		_, err := ioctlBytes(s.fd, kvmGetSupportedCPUID, buf)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		return decodeCPUID(buf)
	}
	return nil, errors.New("kvm: KVM_GET_SUPPORTED_CPUID: more than 4096 entries")
}

func encodeCPUID(entries []CPUIDEntry) []byte {
	buf := make([]byte, cpuidHeaderSize+len(entries)*cpuidEntrySize)
	binary.LittleEndian.PutUint32(buf, uint32(len(entries)))
	for i, e := range entries {
		b := buf[cpuidHeaderSize+i*cpuidEntrySize:]
		for j, v := range [...]uint32{e.Function, e.Index, e.Flags, e.EAX, e.EBX, e.ECX, e.EDX} {
			binary.LittleEndian.PutUint32(b[4*j:], v)
		}
	}
	return buf
}

func decodeCPUID(buf []byte) ([]CPUIDEntry, error) {
	if len(buf) < cpuidHeaderSize {
		return nil, errors.New("kvm: short kvm_cpuid2")
	}
	n := int(binary.LittleEndian.Uint32(buf))
	if n > (len(buf)-cpuidHeaderSize)/cpuidEntrySize {
		return nil, fmt.Errorf("kvm: kvm_cpuid2 claims %d entries in %d bytes", n, len(buf))
	}
	out := make([]CPUIDEntry, n)
	for i := range out {
		b := buf[cpuidHeaderSize+i*cpuidEntrySize:]
		u := func(j int) uint32 { return binary.LittleEndian.Uint32(b[4*j:]) }
		out[i] = CPUIDEntry{Function: u(0), Index: u(1), Flags: u(2), EAX: u(3), EBX: u(4), ECX: u(5), EDX: u(6)}
	}
	return out, nil
}

// VM is one KVM virtual machine.
type VM struct {
	fd       int
	mmapSize int

	mu    sync.Mutex
	slots map[uint32]slot // memory slots in use
}

type slot struct {
	gpa   uint64
	host  []byte
	flags uint32
}

// CreateVM creates a VM.
func (s *System) CreateVM() (*VM, error) {
	fd, err := ioctl(s.fd, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VM: %w", err)
	}
	unix.CloseOnExec(int(fd))
	return &VM{fd: int(fd), mmapSize: s.mmapSize, slots: map[uint32]slot{}}, nil
}

// FD is the VM file descriptor (for ioctls defined elsewhere in this package).
func (v *VM) FD() int { return v.fd }

// Close closes the VM fd. Close every VCPU first.
func (v *VM) Close() error { return unix.Close(v.fd) }

// SetTSSAddr places the three-page TSS region Intel VMX needs for real mode (KVM_SET_TSS_ADDR).
func (v *VM) SetTSSAddr(gpa uint64) error {
	if _, err := v.ioctl(kvmSetTSSAddr, uintptr(gpa)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_TSS_ADDR %#x: %w", gpa, err)
	}
	return nil
}

// SetIdentityMapAddr places the one-page identity map Intel VMX needs for real mode.
func (v *VM) SetIdentityMapAddr(gpa uint64) error {
	a := gpa
	if _, err := ioctlPtr(v.fd, kvmSetIdentityMapAddr, &a); err != nil {
		return fmt.Errorf("kvm: KVM_SET_IDENTITY_MAP_ADDR %#x: %w", gpa, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC pair, IOAPIC and per-vCPU local APICs. Call
// before creating vCPUs.
func (v *VM) CreateIRQChip() error {
	if _, err := v.ioctl(kvmCreateIRQChip, 0); err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// PITSpeakerDummy makes the in-kernel PIT claim port 0x61 (speaker) too.
const PITSpeakerDummy = 1

// CreatePIT2 creates the in-kernel i8254 PIT (ports 0x40-0x43). Needs the irqchip.
func (v *VM) CreatePIT2(flags uint32) error {
	c := pitConfig{Flags: flags}
	if _, err := ioctlPtr(v.fd, kvmCreatePIT2, &c); err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// IRQLine sets the level of an irqchip input (GSI). Edge-triggered sources assert then
// deassert.
func (v *VM) IRQLine(gsi uint32, level bool) error {
	l := irqLevel{IRQ: gsi}
	if level {
		l.Level = 1
	}
	if _, err := ioctlPtr(v.fd, kvmIRQLine, &l); err != nil {
		return fmt.Errorf("kvm: KVM_IRQ_LINE %d=%d: %w", gsi, l.Level, err)
	}
	return nil
}

// SetUserMemoryRegion creates, moves or (size 0) deletes memory slot slot, backed by
// host. KVM keeps using host until the slot is deleted: the caller must keep the
// mapping alive until then. Prefer AddMemory/MoveMemory/DeleteMemory, which track
// slots.
func (v *VM) SetUserMemoryRegion(slot uint32, gpa, size uint64, host []byte, flags uint32) error {
	if size > uint64(len(host)) {
		return fmt.Errorf("kvm: memory slot %d: size %#x exceeds host mapping of %#x bytes", slot, size, len(host))
	}
	r := userspaceMemoryRegion{Slot: slot, Flags: flags, GuestPhysAddr: gpa, MemorySize: size}
	if size > 0 {
		r.UserspaceAddr = hostAddr(host)
	}
	if _, err := ioctlPtr(v.fd, kvmSetUserMemoryRegion, &r); err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION slot %d gpa %#x size %#x: %w", slot, gpa, size, err)
	}
	return nil
}

// AddMemory maps host at guest-physical gpa in a new slot and returns the slot number.
func (v *VM) AddMemory(gpa uint64, host []byte, flags uint32) (uint32, error) {
	if len(host) == 0 {
		return 0, fmt.Errorf("kvm: add memory at %#x: empty mapping", gpa)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	var n uint32
	for {
		if _, used := v.slots[n]; !used {
			break
		}
		n++
	}
	if err := v.SetUserMemoryRegion(n, gpa, uint64(len(host)), host, flags); err != nil {
		return 0, err
	}
	v.slots[n] = slot{gpa: gpa, host: host, flags: flags}
	return n, nil
}

// MoveMemory moves slot n to guest-physical gpa (a BAR being reprogrammed). KVM
// cannot move a slot in place, so it is deleted and re-added; accesses in between
// exit to the VMM as MMIO.
func (v *VM) MoveMemory(n uint32, gpa uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	s, ok := v.slots[n]
	if !ok {
		return fmt.Errorf("kvm: move memory slot %d: no such slot", n)
	}
	if s.gpa == gpa {
		return nil
	}
	if err := v.SetUserMemoryRegion(n, s.gpa, 0, nil, 0); err != nil {
		return err
	}
	delete(v.slots, n)
	if err := v.SetUserMemoryRegion(n, gpa, uint64(len(s.host)), s.host, s.flags); err != nil {
		return err
	}
	s.gpa = gpa
	v.slots[n] = s
	return nil
}

// DeleteMemory removes slot n.
func (v *VM) DeleteMemory(n uint32) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	s, ok := v.slots[n]
	if !ok {
		return fmt.Errorf("kvm: delete memory slot %d: no such slot", n)
	}
	if err := v.SetUserMemoryRegion(n, s.gpa, 0, nil, 0); err != nil {
		return err
	}
	delete(v.slots, n)
	return nil
}
