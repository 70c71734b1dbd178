package kvmtest

import (
	"testing"
	"time"

	"github.com/ptvmm/ptvmm/guest/micro"
	"github.com/ptvmm/ptvmm/vmm/boot"
	"github.com/ptvmm/ptvmm/vmm/kvm"
)

// A guest that stores n times to an unclaimed MMIO address (CPL3) or OUTs n times to
// an unclaimed port (CPL0) exits n times plus the report: the harness counts every exit.
func TestHarnessCountsExits(t *testing.T) {
	const n = 100
	for _, pio := range []bool{false, true} {
		addr := uint64(0xd000_0000)
		if pio {
			addr = 0x6000
		}
		code, err := micro.Doorbells(boot.MicroCodeAddr, n, addr, pio, 7)
		if err != nil {
			t.Fatal(err)
		}
		g := New(t, Config{Code: code, Micro: boot.MicroOptions{Kernel: pio}})
		v, err := g.Run(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		wantPIO, wantMMIO := uint64(0), uint64(n+1)
		if pio {
			wantPIO, wantMMIO = n, 1
		}
		if v != n || g.PIOExits.Load() != wantPIO || g.MMIOExits.Load() != wantMMIO {
			t.Errorf("pio=%v: reported %d, %d PIO and %d MMIO exits; want %d, %d, %d",
				pio, v, g.PIOExits.Load(), g.MMIOExits.Load(), n, wantPIO, wantMMIO)
		}
	}
}

func TestHarnessTimeout(t *testing.T) {
	a := micro.New(boot.MicroCodeAddr)
	a.Halt()
	code, _ := a.Assemble()
	g := New(t, Config{Code: code, Regs: func(r *kvm.Regs) { r.RCX = 1 }})
	if _, err := g.Run(50 * time.Millisecond); err == nil {
		t.Error("spinning guest finished")
	}
}

func TestHarnessStop(t *testing.T) {
	a := micro.New(boot.MicroCodeAddr)
	a.Halt()
	code, _ := a.Assemble()
	g := New(t, Config{Code: code})
	res := g.Start(time.Minute)
	g.Stop()
	if r := <-res; r.Err != ErrStopped {
		t.Errorf("Run after Stop: %v", r.Err)
	}
}
