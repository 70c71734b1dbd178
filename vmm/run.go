package vmm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/ptvmm/ptvmm/vmm/kvm"
)

// ErrAlreadyRun is returned by a second call of Run.
var ErrAlreadyRun = errors.New("vmm: Run called twice")

// Run runs the vCPUs until the guest shuts down (nil), Stop is called (nil), ctx ends
// (ctx.Err()) or the guest crashes or KVM fails (an error with the exit reason and
// RIP). See the package documentation.
func (v *VM) Run(ctx context.Context) error {
	if v.ran.Swap(true) {
		return ErrAlreadyRun
	}
	if v.cfg.Input != nil {
		go func() {
			if err := v.uart.CopyInput(v.cfg.Input); err != nil {
				v.log.Debug("console input ended", "err", err)
			}
		}()
	}
	var wg sync.WaitGroup
	for _, c := range v.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := v.runVCPU(c); err != nil {
				v.end(err)
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		v.end(ctx.Err())
		<-done
	}
	v.uart.Close()
	v.endErr = verdict(v.endErr, v.resetAsked.Load())
	t := v.timings
	v.log.Debug("vm stopped", "first_kvm_run", t.FirstEntry, "first_exit", t.FirstExit, "err", v.endErr)
	return v.endErr
}

// Stop asks Run to return nil soon. Safe from any goroutine, any number of times.
func (v *VM) Stop() { v.end(nil) }

// end records the first reason to stop and stops every vCPU.
func (v *VM) end(err error) {
	v.endOnce.Do(func() {
		v.endErr = err
		v.stopping.Store(true)
		for _, c := range v.vcpus {
			// immediate_exit first: it catches a vCPU about to enter KVM_RUN, the
			// signal one already inside.
			c.SetImmediateExit(true)
			if kerr := c.Kick(); kerr != nil {
				v.log.Warn("kick vCPU", "err", kerr)
			}
		}
	})
}

// guestReset is the i8042 reset line: the guest asked to reboot, which for us means
// it has finished.
func (v *VM) guestReset() {
	v.resetAsked.Store(true)
	v.log.Debug("guest requested reset")
	v.end(nil)
}

func (v *VM) runVCPU(c *kvm.VCPU) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c.BindThread()
	boot := c.ID == 0
	for !v.stopping.Load() {
		if boot {
			v.firstEntry.Do(func() { v.timings.FirstEntry = time.Since(v.cfg.Start) })
		}
		e, err := c.Run()
		if boot {
			v.firstExit.Do(func() { v.timings.FirstExit = time.Since(v.cfg.Start) })
		}
		if err != nil {
			return fmt.Errorf("vmm: vCPU %d: %w", c.ID, err)
		}
		if err := v.handleExit(c, e); err != nil {
			return err
		}
	}
	return nil
}

func (v *VM) handleExit(c *kvm.VCPU, e kvm.Exit) error {
	switch e.Reason {
	case kvm.ExitIO:
		size := int(e.IO.Size)
		if size == 0 {
			return nil
		}
		for off := 0; off+size <= len(e.IO.Data); off += size {
			d := e.IO.Data[off : off+size]
			var claimed bool
			if e.IO.Write {
				claimed = v.pio.Write(uint64(e.IO.Port), d)
			} else {
				claimed = v.pio.Read(uint64(e.IO.Port), d)
			}
			if !claimed {
				v.noteUnclaimed("pio", uint64(e.IO.Port), e.IO.Write)
			}
		}
	case kvm.ExitMMIO:
		var claimed bool
		if e.MMIO.Write {
			claimed = v.mmio.Write(e.MMIO.Addr, e.MMIO.Data)
		} else {
			claimed = v.mmio.Read(e.MMIO.Addr, e.MMIO.Data)
		}
		if !claimed {
			v.noteUnclaimed("mmio", e.MMIO.Addr, e.MMIO.Write)
		}
	case kvm.ExitIntr:
		// A kick or a stray signal; the loop checks whether to stop.
	case kvm.ExitHLT:
		// Only without an in-kernel LAPIC; nothing can wake the vCPU then.
		v.end(nil)
	case kvm.ExitSystemEvent:
		switch e.SystemEvent {
		case kvm.SystemEventShutdown, kvm.SystemEventReset:
			v.resetAsked.Store(true)
			v.end(nil)
		default:
			return v.crash(c, e)
		}
	case kvm.ExitShutdown:
		if v.resetAsked.Load() {
			v.end(nil)
			return nil
		}
		return v.crash(c, e)
	default:
		return v.crash(c, e)
	}
	return nil
}

// errTripleFault marks a crash reported from KVM_EXIT_SHUTDOWN.
var errTripleFault = errors.New("triple fault")

// verdict is Run's result once every vCPU has stopped. A triple fault on one vCPU
// can be handled before another vCPU's reset request (an i8042 0xFE exit already
// taken) is recorded; with every vCPU stopped that request has been seen, and the
// guest asked to reset before it went down.
func verdict(endErr error, resetAsked bool) error {
	if resetAsked && errors.Is(endErr, errTripleFault) {
		return nil
	}
	return endErr
}

// crash describes a fatal exit with the vCPU's RIP.
func (v *VM) crash(c *kvm.VCPU, e kvm.Exit) error {
	r, err := c.Regs()
	if e.Reason == kvm.ExitShutdown {
		if err != nil {
			return fmt.Errorf("vmm: vCPU %d: guest crashed: %w (KVM_EXIT_SHUTDOWN) (RIP unknown: %v)", c.ID, errTripleFault, err)
		}
		return fmt.Errorf("vmm: vCPU %d: guest crashed: %w (KVM_EXIT_SHUTDOWN) at RIP %#x", c.ID, errTripleFault, r.RIP)
	}
	if err != nil {
		return fmt.Errorf("vmm: vCPU %d: guest crashed: %s (RIP unknown: %w)", c.ID, e, err)
	}
	return fmt.Errorf("vmm: vCPU %d: guest crashed: %s at RIP %#x", c.ID, e, r.RIP)
}

// maxUnclaimedLogged bounds the addresses remembered for logging: a guest scanning
// the address space must not grow VMM memory.
const maxUnclaimedLogged = 256

type unclaimedKey struct {
	space string
	addr  uint64
}

// noteUnclaimed logs the first access to each address nothing claims (debug level).
func (v *VM) noteUnclaimed(space string, addr uint64, write bool) {
	if v.unclaimedN.Load() >= maxUnclaimedLogged {
		return
	}
	if _, seen := v.unclaimed.LoadOrStore(unclaimedKey{space, addr}, struct{}{}); !seen {
		v.unclaimedN.Add(1)
		v.log.Debug("unclaimed access", "space", space, "addr", fmt.Sprintf("%#x", addr), "write", write)
	}
}
