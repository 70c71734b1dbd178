package vale

import (
	"fmt"
	"strings"

	"github.com/ptvmm/ptvmm/backends/pcap"
)

// ParseDirection reads "tx", "rx" or "both" (as a command line would give it).
func ParseDirection(s string) (Direction, error) {
	switch strings.ToLower(s) {
	case "tx":
		return MonitorTX, nil
	case "rx":
		return MonitorRX, nil
	case "both", "":
		return MonitorBoth, nil
	}
	return 0, fmt.Errorf("vale: capture direction %q: use tx, rx or both", s)
}

// Capture records the frames of port "valeX:Y" in direction dir into a new pcap file
// at path (snaplen 0: whole frames up to 65535 bytes). The returned stop function
// removes the monitor, then flushes and closes the file.
func (r *Registry) Capture(port string, dir Direction, path string, snaplen int) (stop func() error, err error) {
	sw, name, ok := strings.Cut(port, ":")
	if !ok {
		return nil, fmt.Errorf("vale: capture %q: name a switch port as valeX:Y", port)
	}
	s := r.Get(sw)
	if s == nil {
		return nil, fmt.Errorf("vale: capture %q: no switch %s", port, sw)
	}
	p := s.PortByName(name)
	if p == nil {
		return nil, fmt.Errorf("vale: capture %q: %s has no port %q", port, sw, name)
	}
	w, err := pcap.Create(path, snaplen)
	if err != nil {
		return nil, err
	}
	if err := p.AddMonitor(w, dir); err != nil {
		w.Close()
		return nil, err
	}
	return func() error {
		p.RemoveMonitor(w)
		return w.Close()
	}, nil
}
