package vale

import (
	"errors"
	"fmt"

	"github.com/ptvmm/ptvmm/backends"
	"github.com/ptvmm/ptvmm/backends/netmap"
)

var _ backends.Port = (*Endpoint)(nil)

// Endpoint is a backends.Port on a switch port of its own: what a device model that
// speaks backends.Port (virtio-net) uses to sit on a switch. Send writes frames into
// the port's TX ring and forwards them at once (in the caller's goroutine); Recv takes
// what the switch delivered; ReadyFD is an eventfd the delivery writes. Frames are
// plain Ethernet, without a virtio-net header: a device offering offloads to its guest
// must complete checksums and segment before Send. Close detaches and frees the port.
//
// Concurrency: as backends.Port (one Send and one Recv may run at once).
type Endpoint struct {
	*netmap.Endpoint
	port *Port
}

// OpenEndpoint creates port name on the switch and returns it as a backends.Port.
func (s *Switch) OpenEndpoint(name string, cfg netmap.PortConfig) (*Endpoint, error) {
	p, err := s.NewPort(name, cfg)
	if err != nil {
		return nil, err
	}
	return newEndpoint(p)
}

// OpenEndpoint is Switch.OpenEndpoint for a "valeX:Y[@conf:...]" name, creating
// switch valeX if needed.
func (r *Registry) OpenEndpoint(name string, cfg netmap.PortConfig) (*Endpoint, error) {
	p, err := r.NewPort(name, cfg)
	if err != nil {
		return nil, err
	}
	return newEndpoint(p)
}

func newEndpoint(p *Port) (*Endpoint, error) {
	ne, err := netmap.NewEndpoint(p.Netmap(), false)
	if err != nil {
		p.Detach()
		return nil, fmt.Errorf("vale: %s:%s: %w", p.sw.name, p.name, err)
	}
	return &Endpoint{Endpoint: ne, port: p}, nil
}

// RoomFD is -1: a switch has no flow control. Its forwarding pass empties the TX ring
// at every Send and drops at each destination what that port cannot take, so a
// sender never waits for room (netmap's pipes do; see netmap.Endpoint.RoomFD).
func (e *Endpoint) RoomFD() int { return -1 }

// Name is "valeX:Y".
func (e *Endpoint) Name() string { return e.port.sw.name + ":" + e.port.name }

// SwitchPort is the switch port (index, counters, monitors).
func (e *Endpoint) SwitchPort() *Port { return e.port }

// Close detaches the port (after which no forwarding pass writes to it or wakes its
// eventfd), then releases the eventfd and the port.
func (e *Endpoint) Close() error {
	err := e.port.Detach()
	return errors.Join(err, e.Endpoint.Close())
}
