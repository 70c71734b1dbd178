// Package bench is `vmrun bench`: the same workloads over each network path, one
// table, ratios that compare passthrough with virtio-net over a TAP in the same run.
//
// Paths (Path): ptnet-switch (passthrough into a switch port, a receiver on another
// port), ptnet-pipe (passthrough over a netmap pipe), virtio-tap (virtio-net over a
// TAP with virtio-net headers, a packet socket reading and writing the TAP on the
// host), virtio-switch (virtio-net on a switch port, a receiver on another port).
// Workloads (Workload): tx (the guest sends), rx (the guest receives), pingpong (one
// frame and its echo, for round-trip latency); frame sizes 60 and 1514 B by default;
// each run lasts Config.Duration or Config.Count frames.
//
// Tiers (Tier) say where the driver side runs. process: no KVM at all; the driver
// side runs in host goroutines over the same memory and eventfds a guest would use.
// For ptnet that is netmap.StartLocal (the port's CSB, host loop and Driver) with
// guest/pktgen on the driver rings. For virtio-net it is a netmap-mode virtio-net
// driver (virtq.go): the real device and PCI transport over fake guest memory whose
// first region is a netmap region, one descriptor per netmap slot, kicks as eventfd
// writes on the transport's doorbells (an ioeventfd's job), interrupts as MSI-X
// vectors routed to eventfds (an irqfd's job); pktgen drives its rings unchanged.
// So every path's host side is measured exactly as under KVM, on any machine.
//
// micro (micro.go): a VM built by the vmm library with the path's NIC, whose vCPU
// runs a long-mode micro guest at CPL3 (guest/micro: PtnetTX and PtnetRX, the TX
// and RX sides of netmap's ptnet driver; VirtqTX and VirtqRX, those of a
// virtio-net driver; all polling, no interrupts) at native speed on any /dev/kvm,
// software KVM included. The host does the driver's probe through the device
// registers; then no frame and no kick passes through Go on the vCPU's side. tx:
// the far end counts frames and grants the guest credit in its memory. rx: the far
// end sends pktgen data frames at most a window (448) ahead of the frame count the
// guest keeps in its memory, and sleeps on a doorbell (an ioeventfd) the guest rings
// after a batch only while the far end has set a flag there; the guest checks
// every frame's sequence number (a progress line reports any out of order). So
// nothing is dropped; frames are counted on both ends (rx: Frames is what the far
// end sent, Received what the guest counted). pingpong (PtnetPingPong,
// VirtqPingPong): one ping, its pong from the responder the other tiers use; the
// guest times each round trip with its TSC, whose rate the host's clock gives
// between the guest's ready and done reports. Kicks are the guest's doorbell writes
// to the device.
//
// linux (linux.go): a Linux guest per path (the kernel `make kernel` caches; the
// static agent as /init: vmrun passes itself), one vCPU, whose agent runs the
// pktgen built-in per workload and size: over /dev/ptnet0 (guest module
// ptvmm_ptnet) on the ptnet paths, over eth0 through a packet socket (pktgen
// -iface, guest/pktgen's PacketPort) on the virtio-net paths. Guest TX, RX and
// ping-pong. The far end counts pktgen's data frames by size and answers pings;
// for rx it sends data frames of the run's size, at most a window (448) ahead of
// the guest's acks (pktgen -ack: the next sequence number the guest expects,
// every 64 frames and before it waits), since neither a switch nor a TAP holds
// back a sender. Frames are counted on both ends: the guest's summary line says
// what it sent or received and lost, the far end what arrived or what it sent.
// Kicks: ptnet's from the guest's pktgen (the rings the run used), virtio-net's
// from the device (the TX queue's for tx, the RX queue's, the driver's refills,
// for rx, both for ping-pong). It needs VT-x/AMD-V: elsewhere `make
// bench-linux` runs it inside the QEMU test host (e2e's TestBenchLinux checks it
// there), where the emulated CPU is the limit and only the ratios mean anything.
//
// AutoTier picks the most faithful tier the host allows (linux, micro, process);
// TierStatus says in one line why a tier cannot run here and what to do. In the
// micro and linux tiers the guest's CPU is its vCPUs' time in guest mode (the
// process's guest_time), the host's the rest of the process's CPU less the far
// end's thread.
//
// Threads: on the 2-core machines this is built on, at most two threads are busy in
// a run. For tx and rx the far end (receiver or generator) runs inside the driver's
// thread between its syncs, so the busy threads are the driver's and the host's
// (the ptnet host loop's worker, or the virtio-net queue worker); its CPU time is
// measured apart (thread CPU clock around its calls). For pingpong the far end is a
// responder asleep on the port's readiness descriptor on a thread of its own; one
// frame is in flight, so one thread at a time is busy, but three take turns.
//
// Waiting (Config.Wait, vmrun bench -wait): the host side (the ptnet host loop, the
// virtio-net queue workers) and the process tier's drivers either sleep as soon as
// there is no work and ask for kicks or interrupts (WaitBlock, notify.Block: the
// vmm library's default), or keep polling for Config.Spin after the last work, then
// sleep (WaitAdaptive, notify.Adaptive): under load neither side sleeps, so neither
// kicks nor interrupts are paid. WaitAuto, the default, is adaptive only where the
// machine has a core for every thread a run keeps busy (Wait.For): a thread that
// spins on a core another busy thread needs only delays it. Each record says how its
// run waited.
//
// Generator and receiver: as netmap's pkt-gen, the TX generator writes each buffer
// once and then only slot lengths (pktgen Config.Prefill), and a receiver on a
// netmap ring counts the slots of the expected length, parsing the first frame of
// each drain; a packet-socket receiver (virtio-tap) parses every frame, since the
// host's stack may send on a TAP too.
//
// Records: frames sent and received, drops, Mpps and Gbit/s received, CPU seconds
// per million frames for the driver side (the driver thread's CPU clock less the far
// end's share), the host side (the process's CPU less the driver's thread and the
// far end) and the far end, kicks per frame (doorbell writes by the driver),
// interrupts per frame (sent by the host), round-trip p50/p99 (pingpong), machine,
// kernel, date, tier. Report.WriteTable prints them with the ratios last,
// Report.WriteJSON writes them (schema: testdata/report.schema.json), Report.Plot
// draws Mpps per path and size as a PNG.
//
// Flow control: a switch drops what a full port cannot take, and so does a TAP, so
// the rx generator keeps at most a ring less one driver batch in flight (sent, not
// yet consumed by the driver; in the linux tier, not yet acknowledged by the
// guest) and the tx receiver drains after every driver sync: a
// run measures the path's rate, not its losses. Drops are still counted and shown.
// The driver hands over up to 512 frames per sync (netmap pkt-gen's burst) on
// every path. Each configuration runs Config.Repeat times (vmrun bench: 2) and the
// fastest run is kept: other load on a shared machine only slows runs down.
//
// The report's JSON follows testdata/report.schema.json (ReportSchema;
// ValidateReport checks a document against it).
//
// Concurrency: Run runs one benchmark at a time from the calling goroutine (it
// starts and ends its own goroutines); a Report is plain data.
package bench
