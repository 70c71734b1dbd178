// Package boot puts a guest into memory and describes the vCPU state it starts in: the
// x86 Linux 64-bit boot protocol for bzImages (LoadLinux) and a small long-mode loader
// for test guests (LoadMicro). It is pure: it writes through *memory.Memory and returns
// an *Entry; the vmm package applies that to KVM registers.
//
// # Guest-physical memory map (RAMRanges)
//
//	[0, min(RAM, 3 GiB))              RAM
//	[0xC000_0000, 0xFEC0_0000)        PCI hole: BAR MMIO (PCIHoleStart)
//	0xFEC0_0000                       I/O APIC
//	0xFEE0_0000                       local APIC
//	[4 GiB, 4 GiB + RAM - 3 GiB)      the rest of RAM, if any
//
// # Linux layout (LoadLinux)
//
//	0x0500  GDT: 0x10 __BOOT_CS (64-bit code), 0x18 __BOOT_DS, 0x20 TSS (TR)
//	0x0600  TSS (zeroed; only so TR is valid until the kernel loads its own)
//	0x7000  initial RSP (the kernel sets its own stack at once)
//	0x7000  boot_params, the zero page (RSI at entry)
//	0x9000  PML4; 0xA000 PDPT; 0xB000-0xEFFF four page directories:
//	        identity map of the first 4 GiB with 2 MiB pages
//	0x20000 command line, NUL-terminated (up to 64 KiB, and cmdline_size)
//	0x9FC00-0xFFFFF reserved in e820 (EBDA, VGA, BIOS); ACPI tables live there:
//	0xE0000 RSDP (revision 2), then DSDT, FADT (revision 6, HW-reduced, SCI IRQ 9,
//	        reset register = port 0x64 value 0xFE, sleep control/status registers
//	        at ports 0x600/0x601, no VGA, no CMOS RTC, no 8042), MADT, XSDT, RSDT
//	0x100000 protected-mode kernel (entry at 0x100200, the 64-bit entry point)
//	        initrd: page-aligned, as high as possible below min(initrd_addr_max,
//	        end of RAM below the hole) and above the kernel's init_size area
//
// e820: RAM [0, 0x9FC00), reserved [0x9FC00, 1 MiB), RAM [1 MiB, hole), RAM above
// 4 GiB. boot_params.acpi_rsdp_addr points at the RSDP so the kernel does not scan.
// The MADT lists one enabled local APIC per vCPU (APIC ID = vCPU index), the I/O APIC
// (ID 0, GSI base 0), and overrides IRQ0 -> GSI 2 and IRQ9 (SCI) level/active-high.
//
// With a hardware-reduced FADT Linux sets up no legacy PIC or PIT and maps no ISA IRQs
// by default, and with ACPI on it finds PCI only through a PNP0A03 device. So the DSDT
// declares \_SB.PCI0 (buses 0-255, I/O windows 0-0xCF7 and 0xD00-0xFFFF, memory window
// [PCIHoleStart, IOAPICAddr) plus LinuxConfig.PCIMem64 if set, and a _PRT wiring INTx of
// every slot to GSIs 16-23, see PCIINTxGSI) and \_SB.COM1 (PNP0501, 0x3F8, IRQ 4). The
// timer is the local APIC's (TSC-deadline or calibrated against kvmclock's TSC). The
// DSDT's \_S5 makes `poweroff` write PowerOffValue to SleepControlPort (IsPowerOff).
//
// # Micro guest layout (LoadMicro)
//
//	0x1000  GDT: 0x08 kernel code, 0x10 kernel data, 0x18 user data (DPL 3),
//	        0x20 user code (DPL 3), 0x28 64-bit TSS
//	0x2000  IDT (256 gates, when MicroOptions.IDT is given)
//	0x3000  TSS, RSP0 = 0x10000, no I/O bitmap (IOPL 3 allows IN/OUT anyway)
//	0x4000  PML4; 0x5000 PDPT; 0x6000-0x9FFF page directories: identity map of the
//	        first 4 GiB, 2 MiB pages, user bit set (CPL3 reaches RAM and MMIO)
//	0xA000-0xFFFF kernel stack (top 0x10000) for interrupt handlers
//	0x10000 code (entry point), at most 0x70000 bytes
//	0x80000-0xFFFFF user stack (RSP = 0x100000 at entry)
//	0x100000 data area up to the end of the first RAM range (RSI at entry)
//
// Interrupt delivery through this IDT (INT n from CPL3 into a CPL0 handler, stack
// switch through TSS.RSP0, IRETQ back) works on hardware-style KVM. A software KVM
// such as PVM does not deliver events through a guest IDT: INT n at CPL3 ends in a
// shutdown and at CPL0 in an emulation failure, so interrupt tests need the former.
package boot
