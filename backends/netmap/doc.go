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
// # Passthrough: CSB, host loop, driver side (csb.go, kloop.go, driver.go)
//
// The ptnetmap protocol (SPECS 3.4-3.8) exists once here, for a ptnet guest, a host
// process and benchmarks alike. A port's HW TX rings then HW RX rings are CSB rings
// 0..n-1 (kick i, interrupt i).
//
// CSB (csb.go): NewCSB(atok, ktoa, n) over two byte slices (guest pages, or Go memory),
// 64-byte entries: atok {head, cur, appl_need_kick, sync_flags} written by the app,
// ktoa {hwcur, hwtail, kern_need_kick, kick generation (ptvmm)} written by the host. Every field access is a
// 32-bit atomic; values read are checked by whoever uses them. InitCSB(port, csb) is
// PTCTL CREATE's write: head = cur = hwcur, hwtail, kern_need_kick = 1 per ring (TX
// slots an earlier session left pending in the backend are taken back first, so the
// new session and the kring agree).
//
// Host loop (kloop.go): StartKloop(KloopConfig{Port, CSB, Kicks, Irqs, Mode}) runs
// netmap's sync kloop. Per ring run (SPECS 3.7): kern_need_kick = 0; read head, cur,
// sync_flags; loop { FORCE_RECLAIM if TX space <= N/2; Kring.SyncCSB (prologue, the
// backend's sync); write hwcur then hwtail; interrupt if hwtail moved and
// appl_need_kick; re-read atok }. TX ends when head did not move (Block mode: set
// kern_need_kick, full barrier, re-read head, go on if it moved) or when the app gave
// every slot and the backend holds them (a full pipe peer); the TX kring's notify
// (the peer released slots) restarts it. RX ends when every slot is the app's (then
// it asks for a kick, with the same double check), when nothing new arrived
// (hwtail == head), or after 2 dry rounds; the RX kring's notify (frames delivered)
// restarts it. A run is bounded (16 rounds) so other rings and Stop get their turn.
// Bad head/cur (outside the ring, behind hwcur) make SyncCSB reinitialise the ring:
// the loop counts it, logs at most once a second per ring, republishes hwcur/hwtail
// and sets kern_need_kick = 1 so the app can kick again once it repairs its indices.
// A closed port retires its rings. Stop sets a flag every run checks, stops the
// worker (its goroutine is gone when Stop returns), then waits out the krings' notify
// callbacks; the eventfds stay the caller's. Stats per ring: syncs, wakeups, kicks,
// notifications, interrupts, reinits, errors; Totals: the worker's counters and its
// thread's CPU time (the thread's CPU clock, read only on demand).
//
// One worker per port, not per ring. netmap's old ptnetmap had a kthread per ring;
// its current kloop has one thread per port, and so does this one, because: (1) this
// machine class has 2 cores and must never have more busy threads than cores: in
// Poll or Adaptive mode a worker burns its thread, and a port with 4 rings per
// direction would burn 8; (2) in Block mode idle rings cost nothing either way, and
// the common case - one busy ring per direction - keeps one thread awake instead of
// two threads waking each other (a blocked thread's eventfd wake-up costs ~9 us
// here); (3) ping-pong and TX-then-RX traffic run on one warm thread. What it costs:
// TX and RX of one port do not run in parallel on two cores; ports do.
//
// Wake-ups (Block mode, the default): the worker (notify.Worker) sleeps in epoll on
// the rings' doorbells and one eventfd of its own. Backend notifications (RX frames
// delivered by another port's sync, TX room from a pipe peer) set the ring's pending
// flag and write that eventfd only if the worker announced sleep (sleeping = 1,
// then it re-checks the pending flags: a Dekker pair of sequentially consistent
// atomics, so no notification is lost and a busy worker costs the notifier no system
// call). An idle port has no timer and no polling: zero wake-ups, zero CPU. Adaptive
// mode polls for Spin after the last work, then arms (kern_need_kick on TX rings and
// on full RX rings, with the double check) and blocks; Poll mode never sleeps and
// never asks for kicks (kern_need_kick stays 0; doorbells may be nil). Polling, a
// ring runs only when its atok head changed or it was notified: one load per ring
// and round, not a sync under locks the backend's other users take.
//
// Barriers: Go atomics are sequentially consistent (a store is an XCHG on amd64, a
// full barrier), which gives SPECS 3.6's orders: app stores slots, cur, head; host
// loads head, cur, flags, then slots (inside SyncCSB); host stores hwcur, hwtail after
// the slot and buffer writes of the sync; app loads hwtail, hwcur. The need_kick
// double checks are store-then-load on both sides (netmap's nm_stld_barrier): the
// app stores head then loads kern_need_kick, the loop stores kern_need_kick then
// loads head; the loop stores hwtail then loads appl_need_kick, the app stores
// appl_need_kick then loads hwtail. Each pair has one side see the other.
//
// Driver side (driver.go): NewDriver(DriverConfig{Mem, Nifp, CSB, Kick, Wait}) opens
// the netmap_if and rings in Mem (BAR1 in a guest, the region in a host process) and
// takes the ring state from the CSB, as netmap's guest does after CREATE. DriverRing
// is netmap_pt_guest_txsync/rxsync: Ring() is the user view (in CSB mode the ring
// header's head/cur/tail are the app's own: the host never reads them); Sync(flags)
// checks the user's head/cur (a bad pair reinitialises the user ring, ErrRingReinit),
// clears appl_need_kick, publishes (cur, head), kicks only when kern_need_kick is set
// and there is news for the host (TX: head moved or the ring is full; RX: slots
// released) or with ForceReclaim (TX), and sets tail = hwtail (TX reads hwtail back
// only when full or with ForceReclaim, as netmap reclaims lazily). Wait(timeout)
// syncs and, if still blocked, optionally polls ktoa for Config.Spin, arms
// appl_need_kick, re-reads ktoa (the double check) and only then calls Config.Wait
// (an interrupt: a read on a char device, an eventfd) or, without one, polls. Values
// the host publishes outside the ring are counted and ignored. In a Linux guest Kick
// is a store to KICK(i) in BAR0 (or an ioctl), Wait a read on the device node.
// EventFDKick and EventFDWait make both from eventfds for in-process use.
//
// While the host wakes from a first kick, kern_need_kick is still set and netmap's
// guest kicks again on every sync: a host run that found nothing new leaves hwcur as
// it was, so nothing in the protocol tells "not run yet" from "ran and asked again".
// The host loop here adds that: a kick generation in the ktoa padding
// (CSBKickGenOff, never read by netmap's guests), a new non-zero value written
// before every kern_need_kick = 1. The driver skips a kick when the generation is
// the one its last kick answered (that kick's run clears kern_need_kick, then reads
// atok: it sees the new head); generation 0 (InitCSB, or a host that writes none)
// means kick as netmap does. A kick skipped that way is paid before Wait sleeps, so a
// generation that comes round again costs a kick, never a hang.
//
// Local (driver.go): StartLocal(port, mode) or StartLocalConfig(port, LocalConfig)
// puts a port behind a CSB in Go memory, eventfd doorbells and interrupts, its host
// loop and a Driver - a host process's (or a benchmark's) passthrough attachment to
// a switch port or pipe end.
//
// Benchmarks (BenchmarkKloop): a driver goroutine fills TX slots and, between
// batches, drains the receiving end itself (a switch port's RX ring, or the pipe's
// other end), so only two threads are busy: it and the host loop's worker. Reported:
// Mpps, kicks and interrupts per frame, and CPU ns per frame of the loop thread and
// of the rest (load-independent where Mpps is not, on a shared machine; in the spin
// layout both threads poll, so there they follow wall time). BenchmarkDatapath runs
// driver, SyncCSB and receiver in turn on one goroutine: the datapath's CPU cost per
// frame without threads, wake-ups or cache-line transfers between cores.
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
