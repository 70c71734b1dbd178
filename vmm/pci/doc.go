// Package pci is the VMM's PCI bus: a host bridge at 00:00.0 reached through
// configuration mechanism #1 (ports 0xCF8/0xCFC), the generic type-0 configuration
// header of every function, BARs allocated by the VMM and re-programmable by the guest,
// INTx (level-triggered, honouring the command register's INTx disable bit the way
// Linux's uio_pci_generic uses it) and an MSI-X capability whose vectors are handed to
// an MSIRouter (in practice one KVM GSI route and one irqfd per vector).
//
// BARs come in two flavours: trapped (accesses go to a bus.Device through the PIO or
// MMIO bus, i.e. exits to the VMM) and host-backed (a host mapping, typically a memfd
// region, installed as guest memory at the BAR's address by a MemoryMapper, moved when
// the guest moves the BAR, never copied). Both are also registered on the bus so that
// overlaps between BARs, and with RAM, are refused in one place.
//
// The guest is hostile: a BAR placed over RAM, over another BAR or outside the
// address space is left unmapped (as if decoding were off) until the guest moves it
// somewhere legal; out-of-range config and MSI-X table accesses are ignored and read as
// PCI does (all-ones for absent functions, zero for reserved fields).
//
// The capability list holds MSI-X (at CapOffset) followed by the device's own
// capabilities (Spec.Caps, e.g. virtio's vendor-specific ones that lead Linux's modern
// virtio-pci driver to its registers), 4-byte aligned; a Spec whose capabilities do
// not fit in the 256-byte space is refused. The guest can change none of it except
// the MSI-X message control register.
//
// INTx routing: pin INTA of the device in slot s is wired to IOAPIC GSI IntxGSI(s)
// (16 + s%8, level-triggered); the interrupt line register says so, and firmware tables
// must too (an ACPI _PRT entry per slot: Linux ignores interrupt line values above 15
// when ACPI has no _PRT).
// Concurrency: every exported method may be called from any vCPU goroutine; each
// Function serialises its own state.
package pci
