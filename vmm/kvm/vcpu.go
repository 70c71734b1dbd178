package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// VCPU is one virtual CPU and its shared kvm_run page.
type VCPU struct {
	ID  int
	fd  int
	run []byte       // kvm_run mapping, VCPUMmapSize bytes
	tid atomic.Int32 // OS thread running it, for Kick; 0 before BindThread
}

// CreateVCPU creates vCPU id (also its initial APIC ID) and maps its kvm_run page.
func (v *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := v.ioctl(kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VCPU %d: %w", id, err)
	}
	unix.CloseOnExec(int(fd))
	run, err := unix.Mmap(int(fd), 0, v.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("kvm: map kvm_run of vCPU %d: %w", id, err)
	}
	return &VCPU{ID: id, fd: int(fd), run: run}, nil
}

// FD is the vCPU file descriptor.
func (c *VCPU) FD() int { return c.fd }

// Close unmaps kvm_run and closes the vCPU. It must not be running.
func (c *VCPU) Close() error {
	err := unix.Munmap(c.run)
	if e := unix.Close(c.fd); err == nil {
		err = e
	}
	return err
}

// BindThread records the calling OS thread as the one that runs this vCPU, so Kick
// can interrupt it. The caller must hold runtime.LockOSThread.
func (c *VCPU) BindThread() { c.tid.Store(int32(unix.Gettid())) }

// SetImmediateExit sets kvm_run.immediate_exit: while set, KVM_RUN returns at once
// with EINTR instead of entering the guest. Safe from any goroutine.
func (c *VCPU) SetImmediateExit(on bool) {
	var b byte
	if on {
		b = 1
	}
	// A plain byte store into the shared page: the kernel reads it on every KVM_RUN
	// entry; the Kick signal that follows orders it for a vCPU already in the guest.
	c.run[runImmediateExit] = b
}

// KickSignal interrupts KVM_RUN. SIGURG because every Go program already has a
// runtime handler for it (asynchronous preemption) that returns without side
// effects and the runtime tolerates spurious ones, so it neither kills the process
// nor needs signal.Notify; a handled signal makes KVM_RUN return EINTR
// (KVM_EXIT_INTR). Registering our own signal could clash with an embedder's.
const KickSignal = unix.SIGURG

// Kick makes a running KVM_RUN return with ExitIntr soon. Pair it with
// SetImmediateExit(true) first, which catches a vCPU that is about to enter KVM_RUN
// when the signal arrives. Safe from any goroutine; a no-op before BindThread.
func (c *VCPU) Kick() error {
	tid := c.tid.Load()
	if tid == 0 {
		return nil
	}
	if err := unix.Tgkill(unix.Getpid(), int(tid), KickSignal); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kvm: kick vCPU %d: %w", c.ID, err)
	}
	return nil
}

// Run enters the guest until the next exit and decodes it. An interrupted run
// (signal or immediate_exit) returns Exit{Reason: ExitIntr} and no error.
func (c *VCPU) Run() (Exit, error) {
	_, err := ioctl(c.fd, kvmRun, 0)
	if err != nil {
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			return Exit{Reason: ExitIntr}, nil
		}
		return Exit{}, fmt.Errorf("kvm: KVM_RUN vCPU %d: %w", c.ID, err)
	}
	return decodeExit(c.run)
}

// IF reports kvm_run.if_flag after the last exit: guest interrupts enabled.
func (c *VCPU) IF() bool { return c.run[runIfFlag] != 0 }

// Regs reads the general-purpose registers.
func (c *VCPU) Regs() (Regs, error) {
	var r Regs
	if _, err := ioctlPtr(c.fd, kvmGetRegs, &r); err != nil {
		return r, fmt.Errorf("kvm: KVM_GET_REGS vCPU %d: %w", c.ID, err)
	}
	return r, nil
}

// SetRegs writes the general-purpose registers.
func (c *VCPU) SetRegs(r Regs) error {
	if _, err := ioctlPtr(c.fd, kvmSetRegs, &r); err != nil {
		return fmt.Errorf("kvm: KVM_SET_REGS vCPU %d: %w", c.ID, err)
	}
	return nil
}

// Sregs reads the segment and control registers.
func (c *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	if _, err := ioctlPtr(c.fd, kvmGetSregs, &s); err != nil {
		return s, fmt.Errorf("kvm: KVM_GET_SREGS vCPU %d: %w", c.ID, err)
	}
	return s, nil
}

// SetSregs writes the segment and control registers.
func (c *VCPU) SetSregs(s Sregs) error {
	if _, err := ioctlPtr(c.fd, kvmSetSregs, &s); err != nil {
		return fmt.Errorf("kvm: KVM_SET_SREGS vCPU %d: %w", c.ID, err)
	}
	return nil
}

// SetCPUID sets the CPUID leaves the guest sees (KVM_SET_CPUID2). Call before the
// first Run.
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	if _, err := ioctlBytes(c.fd, kvmSetCPUID2, encodeCPUID(entries)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_CPUID2 vCPU %d (%d leaves): %w", c.ID, len(entries), err)
	}
	return nil
}

// CPUID reads back the CPUID leaves set on this vCPU.
func (c *VCPU) CPUID() ([]CPUIDEntry, error) {
	buf := make([]byte, cpuidHeaderSize+256*cpuidEntrySize)
	binary.LittleEndian.PutUint32(buf, 256)
	if _, err := ioctlBytes(c.fd, kvmGetCPUID2, buf); err != nil {
		return nil, fmt.Errorf("kvm: KVM_GET_CPUID2 vCPU %d: %w", c.ID, err)
	}
	return decodeCPUID(buf)
}

func encodeMSRs(msrs []MSR) []byte {
	buf := make([]byte, msrsHeaderSize+len(msrs)*msrEntrySize)
	binary.LittleEndian.PutUint32(buf, uint32(len(msrs)))
	for i, m := range msrs {
		b := buf[msrsHeaderSize+i*msrEntrySize:]
		binary.LittleEndian.PutUint32(b, m.Index)
		binary.LittleEndian.PutUint64(b[8:], m.Data)
	}
	return buf
}

// SetMSRs writes model-specific registers; all must be accepted.
func (c *VCPU) SetMSRs(msrs []MSR) error {
	n, err := ioctlBytes(c.fd, kvmSetMSRs, encodeMSRs(msrs))
	if err != nil {
		return fmt.Errorf("kvm: KVM_SET_MSRS vCPU %d: %w", c.ID, err)
	}
	if int(n) < len(msrs) {
		return fmt.Errorf("kvm: KVM_SET_MSRS vCPU %d: MSR %#x rejected", c.ID, msrs[n].Index)
	}
	return nil
}

// MSRs reads the MSRs named by idx.
func (c *VCPU) MSRs(idx []uint32) ([]MSR, error) {
	in := make([]MSR, len(idx))
	for i, x := range idx {
		in[i].Index = x
	}
	buf := encodeMSRs(in)
	n, err := ioctlBytes(c.fd, kvmGetMSRs, buf)
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_GET_MSRS vCPU %d: %w", c.ID, err)
	}
	if int(n) < len(idx) {
		return nil, fmt.Errorf("kvm: KVM_GET_MSRS vCPU %d: MSR %#x unreadable", c.ID, idx[n])
	}
	for i := range in {
		in[i].Data = binary.LittleEndian.Uint64(buf[msrsHeaderSize+i*msrEntrySize+8:])
	}
	return in, nil
}

// SetMPState sets the multiprocessing state (MPStateRunnable...).
func (c *VCPU) SetMPState(state uint32) error {
	s := state
	if _, err := ioctlPtr(c.fd, kvmSetMPState, &s); err != nil {
		return fmt.Errorf("kvm: KVM_SET_MP_STATE vCPU %d: %w", c.ID, err)
	}
	return nil
}

// MPState reads the multiprocessing state.
func (c *VCPU) MPState() (uint32, error) {
	var s uint32
	if _, err := ioctlPtr(c.fd, kvmGetMPState, &s); err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_MP_STATE vCPU %d: %w", c.ID, err)
	}
	return s, nil
}
