// Package backends defines Port, the frame endpoint that every network device model
// (virtio-net, ptnet) and the software switch exchange Ethernet frames with. Concrete
// backends live in sub-packages: tap (Linux TAP), netmap (netmap-layout rings, ports
// and pipes) and vale (the learning switch).
package backends
