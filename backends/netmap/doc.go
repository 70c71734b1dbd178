// Package netmap implements netmap-layout packet memory in pure Go: memory regions
// (memfd-backed, so a region can be mapped into a guest as a PCI BAR or passed to
// another process), ports with TX/RX rings and their kernel-side state, the
// head/cur/tail protocol with netmap's prologue checks, pipes, and netmap port names.
// The bytes follow netmap exactly (SPECS 1.1-1.6), so a netmap application or a ptnet
// guest driver can use the memory unchanged.
//
// # API overview
//
// Region (region.go): NewRegion(RegionConfig) maps a memfd holding three pools back to
// back - netmap_if | rings | buffers - each made of whole-page clusters of 64-B-rounded
// objects. PoolsInfo() gives nmreq_pools_info (memsize, mem id, pool offsets, object
// totals and sizes) for the ptnet memdev registers; FD() and Bytes() expose the memory.
// Buffers 0 and 1 are reserved: ValidBuf(idx) is false for them and for idx >= NumBufs.
// Buf(idx) is the buffer or nil. Regions are reference counted (Ref/Close). The memfd
// is MapSize() bytes, Size() rounded up to a power of two, so it can back a PCI BAR.
//
// Port (port.go): NewPort(PortConfig) allocates a netmap_if and rings in a private
// region (default; RegionConfigFor gives its size, as netmap's private allocator) or in
// PortConfig.Region. Rings: TxRing(i)/RxRing(i) with HW rings 0..N-1 then the host ring
// (HostRings is 0 by default, or 1). ring_ofs order in the netmap_if: HW tx, host tx, HW
// rx, host rx; ni_host_*_rings always reports at least 1 (ring_ofs 0 when absent), as
// netmap does. Krings() lists TX then RX (the ptnet ring numbering). Info() is the
// nmreq_port_info_get. Defaults: 1 ring pair, 1024 slots, 2048-B buffers. Close waits
// for running syncs and outstanding leases, then syncs return ErrClosed.
//
// Kring (kring.go): the kernel side of one ring (netmap_kring): hwcur, hwtail, hwlease,
// rhead/rcur/rtail. The ring's user calls Sync (head/cur from the netmap_ring) or a
// ptnet host loop calls SyncCSB(head, cur) (head/cur from the CSB; returns hwcur and
// hwtail to publish). Both run the prologue; bad head/cur reinitialise the ring and
// return ErrRingReinit (counted in Stats). A backend installs SetSync(fn): fn runs with
// the kring lock held.
//
//   - TX side of a switch port, inside fn:
//     pos := k.HwCur(); for { n, next := k.TxScan(pos, frags); if next == pos {break};
//     forward frags[:n] (frames end at a frag without NSMoreFrag); pos = next };
//     k.TxDone(pos). TxScan reads every slot once, drops frames with bad slots, and
//     leaves an unfinished MOREFRAG chain pending.
//   - RX side of a destination port, from any goroutine (e.g. another port's TX fn):
//     l := k.RxReserve(n) (lease; l.N may be less, 0 = full: drop); fill slots
//     l.Start..l.Start+l.N-1 (mod NumSlots) with k.RxFill(pos, data, flags) or
//     k.RxSlotBuf(pos) + k.SetSlotLen; then k.RxComplete(l, used). hwtail advances
//     over finished leases in order and SetNotify's function runs.
//   - Lock order: a TX kring's lock before RX kring locks, never the reverse.
//   - Host rings exist only when asked for (HostRings: 1); they have no host stack
//     behind them: by default a host TX sync discards and a host RX ring stays empty,
//     until an owner installs a SyncFunc.
//
// Ring (ring.go): the user (application) view of a netmap_ring: Head/Cur/Tail,
// SetHeadCur, Advance, Next, Space, Empty, TxPending, Slot/SetSlot, Buf/SlotBuf.
// OpenIf(mem, nifp) reads a netmap_if the netmap_user.h way (TxRing/RxRing).
//
// Pipes (pipe.go): NewPipe(base, id, cfg) makes "base{id" and "base}id" in one region;
// a TX sync on either end moves whole frames into the other end's RX ring by swapping
// buffer indices (NS_BUF_CHANGED set), without copying payload. Frames that do not fit
// stay pending in the TX ring until a later TX sync (or TxRetract); an RX sync that
// releases slots notifies the peer's TX kring. PipeTable opens ends by name.
//
// Names (name.go): ParseName parses "valeX:Y", "netmap:if", "name{N", "name}N" and
// options "@conf:rings=,tx-rings=,rx-rings=,host-rings=,slots=,tx-slots=,rx-slots=",
// "@share=port", "@N".
//
// Endpoint (endpoint.go): a backends.Port on top of ring 0 of a port, acting as the
// port's user (Send fills TX slots and syncs, and takes back with Kring.TxRetract what
// the port could not take; Recv syncs and copies out RX frames). ReadyFD is an eventfd
// written when the RX ring gets frames.
//
// Trust: the kernel side never takes geometry (slot counts, buffer size, offsets) from
// region memory, and checks every index and length it reads there, so a ring's user
// cannot make it panic or touch memory outside the region. Ports sharing a region
// (pipes, @share) share buffers: a hostile user of one can corrupt the other's
// frames, as in netmap, and buffer indices found in its slots or ni_bufs_head at Close
// are freed as its own. Give untrusted users private regions.
//
// All region bytes are accessed by explicit little-endian encoding or, for the u32
// ring indices, by atomics (mem_unsafe.go); nothing casts region memory to Go structs,
// and every index read from shared memory is checked before use.
package netmap
