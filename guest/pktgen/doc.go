// Package pktgen is a netmap packet generator and meter over any ring
// driven by sync and wait (netmap's pkt-gen, reduced): tx sends frames, rx
// receives and counts them (sequence gaps as lost; with Config.Ack it tells
// the sender how far it got, so a sender that keeps a window in flight paces
// itself), ping sends one frame and waits for its echo to measure round
// trips, pong echoes pings. It runs in a
// Linux guest over ptnet (guest/ptnet, as the agent's pktgen built-in) and
// on the host over a switch or pipe port driven in-process
// (netmap.StartLocal): it only needs the Ring interface, which
// *netmap.DriverRing satisfies, and knows nothing of PCI.
//
// Run(ctx, Config) returns a Result: frames, bytes, elapsed time (tx: until
// the host drained the ring; rx: first batch to last), Mpps, Gbit/s, the
// rings' kicks, interrupts, syncs and waits during the run, and for ping the
// round-trip percentiles (nearest rank over all round trips, or a uniform
// sample of 2^20 of them). Result.Human is for people; Result.Summary is one
// line, "pktgen: mode=tx frames=N bytes=B secs=S mpps=X gbps=Y kicks=K
// irqs=I ...", that ParseSummary reads back (tests parse a guest's console
// with it).
//
// Frames carry EtherType 0x88b5, the magic "ptvg", a kind, a sequence number
// and a time stamp (frame.go); anything else received is counted as Bad. A
// virtio-net header (Config.HdrLen 12) is written as zeros before each frame
// and skipped on receive. Received frames are peer data: every slot's buffer
// index and length is checked before use, NS_MOREFRAG chains are bounded by
// the ring, and waits are sliced (50 ms) so a cancelled context or a
// Duration always ends a run.
//
// Concurrency: a Run uses its rings from the calling goroutine only; run
// different rings (or ports) in different goroutines.
package pktgen
