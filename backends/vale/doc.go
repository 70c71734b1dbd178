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
package vale
