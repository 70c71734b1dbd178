// Package ptnet is the Linux guest side of ptvmm's netmap passthrough: it
// finds a ptnet NIC (1b36:000d) and its memdev (1b36:000c) in sysfs, opens
// the NIC's /dev/ptnetN from our kernel module ptvmm_ptnet
// (guest/kmod/ptvmm_ptnet.c), maps the memdev's BAR1 (the host port's
// netmap memory), the two CSB pages and, when BAR0 is MMIO, the register
// page, and returns a netmap.DriverConfig so that netmap.NewDriver runs the
// CSB driver protocol (SPECS 3.6) in the guest. No frame passes through the
// guest kernel.
//
// # Why a kernel module, not sysfs and pagemap
//
// The module-free path (sysfs resourceN files for the BARs, physical
// addresses from /proc/self/pagemap, busy polling) was rejected:
//   - BAR1 must be mapped write-back. sysfs maps BARs uncached (or
//     write-combining): correct but slow on real hardware, where AMD NPT
//     honours the guest's memory type. Options.Cached picks the module's
//     write-back or uncached mapping, so the difference can be measured.
//   - The CSB must be guest memory whose physical address is known and never
//     changes. User pages can move (compaction, swap) and pagemap hides
//     physical addresses without CAP_SYS_ADMIN; the module's pages stay put.
//   - ptnet interrupts are MSI-X only. Debian's kernel has VFIO_NOIOMMU off
//     and uio_pci_generic does INTx only, so without a module the guest could
//     only busy-poll, which defeats the host's interrupt suppression.
//
// # Use
//
//	d, err := ptnet.Open(ptnet.Options{Cached: true}) // first /dev/ptnetN
//	drv, err := netmap.NewDriver(d.DriverConfig())
//	... drv.TxRing(0) ...
//	d.Close() // flush, PTCTL DELETE, unmap; after the driver's users stopped
//
// Open negotiates PTFEAT and VNET_HDR_LEN (Options.VnetHdr: 12, else 0),
// primes the CSB as netmap's guest driver does (appl_need_kick 1 on RX
// rings, 0 on TX; kern_need_kick 1) and writes PTCTL CREATE; the device then
// fills the CSB from its rings. Kick is one 32-bit store to the mapped
// KICK(i) register, or an ioctl when BAR0 is I/O space. Wait blocks in the
// module's WAIT ioctl on ring i's MSI-X interrupt count, in slices of at
// most 100 ms so Close never waits long. Close first kicks the rings whose
// published head the host loop has not synced (an RX loop asks for no kick
// after the last frame, so slots released then would otherwise be delivered
// again after the next CREATE) and waits up to 100 ms for it to catch up.
//
// The ABI with the module (mmap offsets, ioctls, info layout) is in abi.go;
// abi_test.go checks it against the module's source. Find and DefaultDevice
// read sysfs with u-root's pkg/pci; the module pairs the ptnet with the
// memdev whose MEMID equals its HOSTMEMID, and Open checks that pairing and
// finds the memdev's PCI address by its BAR1 address.
package ptnet
