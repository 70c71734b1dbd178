// Package tap is the Linux TAP backend: it opens (or creates) a TAP interface with
// IFF_TAP|IFF_NO_PI, optionally IFF_VNET_HDR (frames carry a virtio-net header, so
// guest checksum and segmentation offloads pass straight through) and IFF_MULTI_QUEUE
// (one fd per queue pair). Readv/Writev move a frame between the kernel and guest
// buffers directly, without an intermediate copy; each Queue also implements
// backends.Port for code that works with whole frames.
//
// Deleting the interface under an open queue (ip link del) makes the kernel fail
// every read and write with EBADFD; the queue reports that as ErrGone.
//
// SetAddr gives the host side of a TAP an address (netlink RTM_NEWADDR), so a
// guest on it reaches the host stack; AddAddr and SetLinkUp do the same for any
// interface (the guest agent's ifconfig).
package tap
