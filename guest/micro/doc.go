// Package micro builds the tiny 64-bit test guests that KVM tests run: machine code for
// boot.LoadMicro (identity-mapped long mode, entry at CPL3 with IOPL 3, optional IDT
// whose handlers run at CPL0).
//
// Why hand-assembled bytes from Go rather than freestanding C built by gcc at test time:
// the programs are a few dozen instructions (loops of stores and port writes, interrupt
// handlers that count and EOI) whose exact instruction stream matters - a doorbell loop
// must be one store and a branch, a handler must be a handful of instructions because
// CPL0 code is emulated ~1000x slower on software KVM. A small encoder for exactly the
// instructions we use keeps that stream visible in the test source, needs no toolchain,
// linker script or objcopy on CI machines, and builds guests with parameters (counts,
// addresses, slot numbers) as plain Go values. The encoder is checked against GNU as
// when it is installed.
//
// Conventions shared with the tests: the guest reports through stores to unmapped
// MMIO addresses, which exit to the VMM - ReadyAddr when it finished setting up,
// DoneAddr with a result when it is done - and keeps counters in its data area
// (boot.MicroDataAddr). Port I/O (configuration mechanism #1, PIO doorbells) faults at
// CPL3 on software KVM (PVM ignores IOPL there), so programs using it run at CPL0.
package micro
