// Package testdev is a small PCI device for tests and for anyone embedding the VMM
// who wants to see interrupts and BARs work end to end.
//
// Identity: vendor 0x1af4, device 0x10f0, class 0xff0000 (unassigned). QEMU's PCI ID
// list (docs/specs/pci-ids.rst) keeps 1af4:10f0..10ff for experimental use without
// registration, so no shipped device uses it. No in-tree Linux driver binds it:
// virtio_pci matches vendor 0x1af4 but refuses device IDs above 0x107f at probe. A
// guest binds the INTx flavour on request, e.g. uio_pci_generic through its new_id
// file (INTx only); the MSI-X flavour is driven by our own module guest/kmod
// (ptvmm_testdev), which enables all its vectors as ptvmm-testdev-<N>.
//
// BAR0 (4 KiB, 32-bit memory, trapped) holds 32-bit registers (aligned dword accesses
// only; others read as zero and are dropped):
//
//	0x00 ID       RO  Magic
//	0x04 SCRATCH  RW  any value
//	0x08 RAISE    WO  INTx mode: raise the INTx level (value ignored);
//	                  MSI-X mode: fire vector <value>
//	0x0c ACK      RW  read: INTx level (0/1); write: lower the INTx level
//	0x10 COUNT    RO  interrupts raised so far (guest RAISE writes and host Fire/RaiseINTx)
//	0x14 VECTORS  RO  MSI-X vectors (0: INTx mode)
//
// With Config.Vectors > 0 the device has an MSI-X capability whose table (at 0) and
// PBA (at 0x800) fill BAR2 (4 KiB) and no INTx pin; otherwise it has pin INTA and no
// MSI-X. The host fires interrupts with Fire (MSI-X) or RaiseINTx/LowerINTx.
//
// INTx is level-triggered the PCI way: RAISE holds the level until ACK (or LowerINTx),
// and at every EOI the resample path re-asserts it unless the guest set INTx disable,
// which is how uio_pci_generic masks it.
package testdev
