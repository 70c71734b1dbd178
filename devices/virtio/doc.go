// Package virtio is the device side of virtio 1.0 over PCI: the split virtqueue
// (descriptor chains, indirect tables, EVENT_IDX notification suppression, used-ring
// publication with the right barriers) and the virtio-pci transport (modern
// capabilities plus the legacy I/O BAR of a transitional device) as a vmm/pci device.
//
// The driver is a guest and is hostile. Every index, address and length it supplies is
// checked against the queue size and guest memory before use, each descriptor is read
// once into locals, and chains are bounded by the queue (or indirect table) size, which
// also catches loops. A malformed chain is returned to the driver with zero bytes
// written and counted; a malformed ring (avail index jumping past the queue size, a head
// index outside the table, rings outside guest memory) breaks the queue, and the
// transport then sets DEVICE_NEEDS_RESET and raises a configuration interrupt. Nothing
// here panics or exits on guest input.
//
// The function is transitional (device ID 0x1000 + type - 1, revision 0): its vendor
// capabilities (Transport.VendorCaps, chained by vmm/pci after MSI-X) lead Linux's
// modern virtio_pci driver to the registers in BAR4, so it negotiates VERSION_1; a
// legacy-only driver still finds the 0.9.5 registers in the BAR0 I/O window.
package virtio
