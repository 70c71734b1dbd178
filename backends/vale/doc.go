// Package vale is a VALE-style learning Ethernet switch between netmap ports, in
// process: up to MaxSwitches named switches ("valeX") per Registry, up to MaxPorts
// ports each, frames copied once from a source port's TX ring into destination RX
// rings by the forwarding pass that runs inside the source ring's TX sync.
//
// Forwarding follows SPECS 2: batches of up to BatchSize slots; a learning table of
// HashSize buckets keyed by the Jenkins-mix hash of the MAC (learn unicast sources,
// no aging; a per-port last-source cache skips the hash for steady flows); unknown
// unicast and group destinations flooded to every other port; frames to their own
// source, frames shorter than 14 bytes and MOREFRAG chains longer than
// netmap.MaxFrags dropped; destination slots reserved with a lease so the copy runs
// without ring locks; no room means drop and count, never wait.
//
// The forwarding decision is a Lookup function that a user may replace per switch
// (SetLookup): a firewall or a custom forwarding rule plugs in there, and may call
// the switch's Learning().Lookup for the default behaviour.
//
// Ports: NewPort creates a netmap port with a private region (its Region is what a
// ptnet device maps into a guest; the device's host loop drives the rings through
// netmap.Kring.SyncCSB, which forwards); Attach adopts an existing netmap port;
// OpenEndpoint gives a device that speaks backends.Port (virtio-net) a port of its
// own; AttachBackend connects any backends.Port (a TAP) through a pump (BackendPort).
// Frames in the switch are plain Ethernet (no virtio-net header). Each port has
// Counters and optional Monitors (the pcap package writes them to a file;
// Registry.Capture does both steps for a "valeX:Y" name). WriteList formats switches,
// ports and counters for a `vmrun vale` listing.
//
// Slot flags honoured on TX: NS_MOREFRAG (chains up to netmap.MaxFrags slots) and
// NS_NO_LEARN (with the default lookup). RX slots carry the fragment count in the
// high byte and NS_MOREFRAG on all but the last slot. Not implemented: NS_INDIRECT,
// the TX destination-port override in the flags' high byte, per-port virtio-net
// header lengths, host rings (a port's host rings are not switched).
//
// Concurrency is described on Switch, Port, Monitor, Lookup and BackendPort. Lock
// order: a TX kring lock, then the switch lock (shared), then RX kring locks.
//
// # The switch service
//
// Service (service.go, `vmrun switch`) is one process owning switches, pipes and
// TAP ports for many others, as netmap's kernel module does for bhyve and QEMU
// processes: clients attach ports over a Unix socket, get the port's region
// memfd, and hand over a CSB and eventfds; the service runs every port's host
// loop (netmap.StartKloop). Client (client.go) is the other end: Attach gives a
// RemotePort (memfd and geometry; Start, MoveCSB, Stop, Detach), OpenHostPort a
// HostPort (a netmap.Driver over the mapped region and a CSB in a sealed memfd
// of the client's: a host program's netmap port), OpenEndpoint a DriverEndpoint
// (a backends.Port on a HostPort, for virtio-net). List, AttachTap, DetachTap and
// Capture serve `vmrun vale`.
//
// The socket is SOCK_SEQPACKET, default DefaultSocketPath(), mode 0600 in a 0700
// directory; every peer's uid is checked with SO_PEERCRED (default: the
// service's uid and root). The service runs in the foreground and is not started
// on demand: it outlives the VMs attached to it and is shared by processes of
// different lifetimes, so it belongs to whoever supervises the host (systemd, a
// shell, a test), not to the first vmrun that happens to need it.
//
// Protocol (version 1, proto.go). One packet is one message: a 16-byte header
// {u32 type; u32 flags; u32 size; u32 seq} (little-endian; flags bits 0-2 the
// version, 0x8 ERROR, 0x10 REPLY; size = payload bytes, the rest of the packet)
// and the payload; descriptors travel as SCM_RIGHTS with the packet. Every
// request gets one reply echoing its type and seq: the payload below, or, with
// ERROR, {u32 errno; pad; message (up to 1 KiB)}. Names are NUL-padded
// printable ASCII fields; reserved bytes must be zero. Requests (payload bytes,
// descriptors -> reply):
//
//	HELLO 1         {u32 version; pad} (8, 0)            -> {u32 version; u32 pid}
//	ATTACH 2        {name[64]; u32 tx_rings, rx_rings,   -> {u32 port; pad; u64 nifp_ofs;
//	                 tx_slots, rx_slots; pad[8]} (88, 0)     u64 map_size; u32 tx_rings,
//	                                                         rx_rings, tx_slots, rx_slots;
//	                                                         nmreq_pools_info[64]} + region memfd
//	START 3         {u32 port; u32 rings; u64 atok_ofs;   -> empty
//	                 u64 ktoa_ofs; u32 mode; u32 spin_us}
//	                 (32, 2+2*rings: atok memfd, ktoa memfd, kicks, irqs)
//	MOVE_CSB 4      {u32 port; pad; u64 atok_ofs; u64 ktoa_ofs} (24, 2) -> empty
//	STOP 5          {u32 port; pad} (8, 0)                -> empty
//	DETACH 6        {u32 port; pad} (8, 0)                -> empty
//	LIST 7          {u32 start; pad} (8, 0)               -> {u32 total; u32 next; u32 count;
//	                                                         pad; entry[count]} (entry: 184 B,
//	                                                         see ListEntry)
//	TAP_ATTACH 8    {switch[16]; tap[16]} (32, 0)         -> empty
//	TAP_DETACH 9    {switch[16]; tap[16]} (32, 0)         -> empty
//	CAPTURE_START 10 {name[64]; u32 dir; u32 snaplen} (72, 1: a writable file) -> {u32 id; pad}
//	CAPTURE_STOP 11 {u32 id; pad} (8, 0)                  -> {u64 packets; u64 dropped}
//
// ATTACH names a switch port "valeX:Y" (the switch is created on first use) or a
// pipe end "name{N" / "name}N", with netmap's @conf: options; the port handle is
// the connection's. START validates the CSB memfds (memfds sealed against
// shrinking, the arrays inside them, not overlapping), maps only the pages
// holding the two arrays, checks every kick and irq descriptor is an eventfd,
// writes the CSB from the rings' state (ptnet's PTCTL CREATE: netmap.InitCSB)
// and starts the loop (mode 0 block, 1 adaptive). MOVE_CSB stops the loop, maps
// the new arrays, rewrites them and restarts it with the same eventfds; a ptnet
// guest moving its CSB goes through STOP and START instead, as its device stops
// the loop on the address write and starts it on CREATE. LIST pages through
// every switch port (by switch and index, TAP ports included) and pipe end with
// the switch's, the krings' and the host loop's counters and the owner's pid.
// CAPTURE_START copies a port's frames (dir 1 tx, 2 rx, 3 both) through a
// bounded queue to the file (drops counted, the switch never waits on it).
//
// Every request is validated before anything is done: unknown types, lengths,
// descriptor counts, names, reserved bytes, ranges and offsets get an error reply
// and the connection goes on; so do packets too long or with too many
// descriptors. Every descriptor that came with a request is closed when it is
// served (the service keeps dups of what it uses). A connection's end (the
// client exits or is killed) detaches its ports at once: loops stopped, the CSB
// unmapped, ports closed, region memfds closed. A loop that does not stop within
// two seconds (a peer can make its own eventfds blocking and drain or fill them)
// is abandoned with its mappings and descriptors, never unmapped under it. The
// region memfds are sealed against resizing when netmap created them sealable.
package vale
