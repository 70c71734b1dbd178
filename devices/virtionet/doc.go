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
package virtionet
