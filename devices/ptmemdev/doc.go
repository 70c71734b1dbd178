// Package ptmemdev is netmap passthrough's two PCI devices (SPECS 3.1-3.5, 3.8): the
// memdev, whose BAR1 is a netmap memory region, and the ptnet NIC, whose registers,
// KICK doorbells, MSI-X vectors and CSB connect a guest driver to a port's host loop
// (backends/netmap Kloop). The devices are thin: no frame and no kick passes through
// their Go code once the guest runs, except a KICK that traps because its ioeventfd
// could not be placed.
//
// # Memdev (1b36:000c, class 0xff)
//
// BAR0: 128-byte I/O BAR with the read-only pool registers (MEMSIZE, MEMID,
// IF/RING/BUF pool offset, count, size), as QEMU has it; an I/O BAR keeps the 32-bit
// memory window's alignment for BAR1. BAR1: the region's memfd mapped shared for
// Region.MapSize bytes (a power of two) as a 64-bit prefetchable memory BAR backed by
// a KVM memslot: real memory the guest maps cached and hands to user space, never
// trapped. vmm/pci moves the memslot when the guest moves the BAR and refuses a BAR
// over RAM or over another BAR. One memdev per region (the caller keeps the map).
//
// # Ptnet (1b36:000d, class 0x020000, subsystem 1b36:0001)
//
// BAR0 is a 4 KiB 32-bit MMIO BAR (QEMU and bhyve use 256 bytes of I/O): netmap's guest
// driver maps it with pci_iomap, which takes both, and a page-sized MMIO BAR lets a
// guest program mmap the KICK registers and kick with one store. Registers per SPECS
// 3.3, 32-bit aligned accesses only (others read as zero and are counted). KICK(i) at
// 128+4i is a 4-byte MMIO ioeventfd without datamatch, moved with BAR0. BAR2 holds the
// MSI-X table and PBA with exactly one vector per ring, TX rings then RX rings; each
// vector is an irqfd on an MSI route that follows the table entry (vmm/pci routes it
// when the entry is unmasked or rewritten). There is no INTx: the guest driver needs
// MSI-X. The host loop writes the irqfd directly, so the mask is applied at the irqfd,
// as QEMU does with its MSI-X mask notifiers: the vectors are notify.DirectMSIXVectors,
// a pci.MaskNotifier, and a vector's irqfd is bound to KVM only while the guest has it
// unmasked (entry bit, function mask, MSI-X enable) and routed. An interrupt raised
// while it is masked, or before the guest first programs it, waits in the eventfd,
// reads as pending in the PBA, and is injected once when the vector is unmasked (KVM
// injects a readable eventfd when it binds it).
//
// The CSB: writing CSB_GH_BAL or CSB_HG_BAL stops a running loop and maps
// 64*nrings bytes at the address (high word from the BAH register) through
// vmm/memory's bounds-checked Slice: only guest RAM, 64-byte aligned; BARs, BAR1
// included, are never RAM. Address 0 unmaps. PTCTL CREATE (1) needs both arrays,
// disjoint; it writes the CSB from the port's ring state (netmap.InitCSB) and starts
// netmap.StartKloop with the KICK eventfds and the vectors' irqfd eventfds. DELETE (2)
// stops it. PTCTL reads the last result: 0, or a Linux errno: EBUSY (CREATE while
// running), ENXIO (a CSB address not written), EFAULT (a CSB address refused), EINVAL
// (unknown command, overlapping arrays), ENODEV (closed), EIO (the loop could not
// start). DELETE with no loop running answers 0 and is counted. Reset (guest reset,
// driver reload) and Close stop the loop; Stop returns when its goroutines are gone.
//
// PTFEAT acks FeatureVnetHdr when Config.VnetHdr; VNET_HDR_LEN takes 0, or 12 once that
// feature was acked, and reads back what it kept. NUM_* never report zero rings and at
// most MaxRings (32) rings in all. HOSTMEMID is the port's region id, the memdev's MEMID.
//
// Bad guest input (KICK beyond the rings, PTCTL garbage, CREATE twice, DELETE
// without CREATE, CSB outside RAM, writes to read-only registers) is refused or
// ignored, counted in Stats, logged within a fixed budget, and never panics or blocks.
//
// Plug: PlugMemdev and PlugPtnet add the devices to a Machine (*vmm.VM, or a test
// guest) with ioeventfds and irqfds; vmm.AddPtnet is the library's entry point.
package ptmemdev
