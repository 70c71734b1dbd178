// Package kvmtest runs guest/micro test guests on the host's /dev/kvm for tests and
// benchmarks: a VM with RAM, optionally the in-kernel irqchip, one vCPU started from
// boot.LoadMicro's entry state, PIO and MMIO buses for the exits, and exit counters.
// Tests call Skip-aware New, which skips with the reason when /dev/kvm is unusable.
//
// It also holds the small KVM adapters the tests wire devices with (MemSlots, a
// pci.MemoryMapper on KVM memslots).
package kvmtest
