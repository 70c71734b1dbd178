// Package vmm is the virtual machine monitor as a library: a Config describes the
// guest (a Linux bzImage with initramfs and command line, or a small long-mode test
// guest), New builds the machine on KVM and Run runs it until the guest shuts down,
// the context ends or Stop is called.
//
// # The machine
//
// Guest RAM per boot.RAMRanges (below the PCI hole at 3 GiB, the rest above 4 GiB),
// KVM's in-kernel irqchip (PIC, IOAPIC, local APICs) and PIT, a 16550A UART at 0x3f8
// on IRQ 4 (the console), an i8042 at 0x60/0x64 whose reset line ends the VM, a CMOS
// clock at 0x70/0x71, a PCI host bridge at 0xCF8/0xCFC (vmm/pci), and a sink for the
// POST port 0x80. Other port and MMIO accesses reach nothing: reads return all-ones,
// writes are dropped. Devices are added through PIO, MMIO, PCI and KVM before Run.
//
// # Running and stopping
//
// Each vCPU runs on its own goroutine locked to its OS thread (KVM is fastest, and
// Kick can signal it, when a vCPU always runs on the same thread). To stop, the VMM
// sets kvm_run.immediate_exit on every vCPU and then sends each vCPU thread SIGURG
// (see kvm.KickSignal): the signal breaks a vCPU out of KVM_RUN, and immediate_exit
// catches one that was just about to enter it, so no stop request is lost.
//
// Run returns nil when the guest shuts down or resets (the i8042 reset that Linux
// uses with reboot=k, or a KVM system event of type shutdown or reset) and when Stop
// was called; ctx.Err() when the context ended; and an error naming the exit reason
// and RIP when the guest crashed: a triple fault (KVM_EXIT_SHUTDOWN) is a crash unless
// some vCPU asked for a reset before all of them stopped; so are FAIL_ENTRY,
// INTERNAL_ERROR and unexpected exits. The VMM never panics or exits on guest behaviour.
//
// # Hardware virtualization
//
// On a KVM without VT-x/AMD-V (a software KVM such as PVM) a Linux guest's kernel
// code would be emulated instruction by instruction; New refuses a Linux guest there
// with ErrNoHardwareVirt unless Config.Force is set. Micro guests, which run at CPL3,
// work everywhere.
//
// Concurrency: New, Run and Close are called from one goroutine, in that order, Run
// at most once; Stop may be called from any goroutine at any time after New.
package vmm
