package vmm

import (
	"context"
	"sync/atomic"
	"testing"
)

// countDev stops the VM after n writes.
type countDev struct {
	n    atomic.Int64
	stop func()
}

func (d *countDev) Read(off uint64, data []byte) { clear(data) }
func (d *countDev) Write(off uint64, data []byte) {
	if d.n.Add(-1) == 0 {
		d.stop()
	}
}

// BenchmarkMMIOExitToDevice measures one guest MMIO write that exits to the VMM and
// is dispatched to a device on the MMIO bus: KVM exit, decode, bus lookup, re-entry.
// The guest runs at CPL3 (native on PVM as on hardware KVM).
func BenchmarkMMIOExitToDevice(b *testing.B) {
	if err := CheckHost(true); err != nil {
		b.Skip(err)
	}
	code := []byte{
		0xb9, 0x00, 0x00, 0x00, 0xd0, // mov ecx, 0xd0000000
		0x89, 0x01, // loop: mov [rcx], eax
		0xeb, 0xfc, // jmp loop
	}
	v, err := New(Config{Micro: &Micro{Code: code}})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	d := &countDev{stop: v.Stop}
	d.n.Store(int64(b.N))
	if err := v.MMIO().Register(0xd0000000, 0x1000, d); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	if err := v.Run(context.Background()); err != nil {
		b.Fatal(err)
	}
}
