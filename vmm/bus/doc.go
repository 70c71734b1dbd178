// Package bus dispatches guest port I/O and MMIO accesses to devices by address.
//
// A VMM has one Bus for port I/O and one for MMIO. Devices register a
// [base, base+size) window; an access is routed to the device whose window contains
// its first byte, with the offset from the window base.
//
// Concurrency: Register and Unregister may run concurrently with Read and Write from
// any number of vCPU goroutines. The device table is copy-on-write: readers load an
// immutable snapshot through an atomic pointer and never take a lock, so dispatch on
// the vCPU exit path is a binary search and an indirect call.
package bus
