// Package virtionet is the virtio-net device model: MAC, link status, mergeable
// receive buffers, checksum and TSO offloads (passed through to a TAP's virtio-net
// header untouched), MTU, the control queue (promiscuous, all-multicast, MAC filter
// table, queue pairs) and multiqueue with one notify.Worker per queue pair. A worker
// owns its pair's queues and backend port: TX chains go to the backend with writev
// straight from guest memory, received frames are read with readv straight into guest
// buffers (VectorPort); other ports go through backends.Port with one copy.
//
// A backend that vanishes (ip link del of its TAP) takes the link down with one log
// line; the device and the VMM keep running.
//
// The guest cannot hold a worker: every service pass does a bounded amount of work
// (virtio.Queue.Drain with a budget, a bounded number of TX/RX rounds) and, with work
// left, signals the worker's own eventfd and returns, so the worker looks at its stop
// event between passes and a reset always stops it. Receive chains are popped once
// and kept until a frame fills them; a chain that can hold no frame is returned
// unused. Every frame taken from a backend is delivered or counted as dropped (a
// frame waiting for buffers when the device resets counts as dropped). A port with
// flow control (RoomPort, a netmap pipe) pauses TX instead of losing frames.
package virtionet
