// Package kvmtest runs guest/micro test guests on the host's /dev/kvm for tests and
// benchmarks: a VM with RAM, optionally the in-kernel irqchip, one vCPU started from
// boot.LoadMicro's entry state, PIO and MMIO buses for the exits, and exit counters.
// Tests call Skip-aware New, which skips with the reason when /dev/kvm is unusable.
//
// It also holds the small KVM adapters the tests wire devices with (MemSlots, a
// pci.MemoryMapper on KVM memslots).
//
// What we observed on this development machine's software KVM (PVM), which the tests
// are written around: IN/OUT at CPL3 raise #GP despite IOPL 3, and INT n at CPL3
// raises #UD, so guests report through MMIO stores and do port I/O at CPL0;
// interrupts reach IDT handlers while the guest runs at CPL3 (a CPL0 guest with IF set
// did not take them), so CPL0 set-up code drops to CPL3 before waiting; the irqfd
// resample eventfd can fire at injection rather than at the guest's EOI.
package kvmtest
