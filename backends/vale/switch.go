package vale

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/ptvmm/ptvmm/backends/netmap"
)

// Limits, as VALE's.
const (
	// MaxSwitches is how many switches a Registry holds (NM_BRIDGES).
	MaxSwitches = 8
	// MaxPorts is the port count of a switch (NM_BDG_MAXPORTS); indices 0..253.
	MaxPorts = 254
	// BatchSize is the most TX slots one forwarding pass takes (bridge_batch).
	BatchSize = 1024
	// MinFrame is the shortest frame forwarded: an Ethernet header.
	MinFrame = 14
)

// Errors callers may test for.
var (
	ErrTooManySwitches = errors.New("too many switches")
	ErrSwitchFull      = errors.New("switch has no free port index")
	ErrNameInUse       = errors.New("port name already attached")
	ErrNotAttached     = errors.New("port is not attached")
)

// Registry is a set of named switches ("vale0", "valeX"), created on first use, at
// most MaxSwitches. Concurrency: all methods may be called from any goroutine.
type Registry struct {
	mu       sync.Mutex
	switches map[string]*Switch
}

// NewRegistry returns an empty registry. Most programs use Default.
func NewRegistry() *Registry { return &Registry{switches: map[string]*Switch{}} }

// Default is the process-wide registry (the netmap module's set of bridges).
var Default = NewRegistry()

// CheckSwitchName accepts "vale" followed by letters, digits, '_', '-' or '.'.
func CheckSwitchName(name string) error {
	const p = "vale"
	if len(name) < len(p) || name[:len(p)] != p || len(name) > netmap.IfNameSize-1 {
		return fmt.Errorf("vale: switch name %q: must be \"vale\" plus up to %d letters or digits (e.g. vale0)", name, netmap.IfNameSize-1-len(p))
	}
	for _, c := range name[len(p):] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("vale: switch name %q: character %q not allowed", name, c)
		}
	}
	return nil
}

// Switch returns the switch called name, creating it if it does not exist.
func (r *Registry) Switch(name string) (*Switch, error) {
	if err := CheckSwitchName(name); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.switches[name]; s != nil {
		return s, nil
	}
	if len(r.switches) >= MaxSwitches {
		return nil, fmt.Errorf("vale: creating %s: %w (limit %d); detach ports and Destroy an unused switch", name, ErrTooManySwitches, MaxSwitches)
	}
	s := newSwitch(name)
	r.switches[name] = s
	return s, nil
}

// Get returns the switch called name, or nil.
func (r *Registry) Get(name string) *Switch {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.switches[name]
}

// Switches lists the switches sorted by name.
func (r *Registry) Switches() []*Switch {
	r.mu.Lock()
	out := make([]*Switch, 0, len(r.switches))
	for _, s := range r.switches {
		out = append(out, s)
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// Destroy removes an empty switch (its lookup hook and learning table go with it).
// A switch with ports stays: an emptied switch is kept until Destroy, unlike VALE
// which frees a bridge with its last port, so a custom lookup survives port churn.
func (r *Registry) Destroy(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.switches[name]
	if s == nil {
		return fmt.Errorf("vale: destroy %s: no such switch", name)
	}
	if n := len(s.Ports()); n > 0 {
		return fmt.Errorf("vale: destroy %s: %d ports still attached; detach them first", name, n)
	}
	delete(r.switches, name)
	return nil
}

// NewPort creates a switch port from a netmap name "valeX:Y" (with optional
// "@conf:..." ring and slot counts), creating switch valeX if needed. cfg supplies
// whatever the name leaves unset; the name's port part becomes the port name. The
// port has a private region, as a VALE port has.
func (r *Registry) NewPort(name string, cfg netmap.PortConfig) (*Port, error) {
	n, err := netmap.ParseName(name)
	if err != nil {
		return nil, err
	}
	if n.Kind != netmap.KindVALE || n.Pipe {
		return nil, fmt.Errorf("vale: %q is not a switch port name; use valeX:Y", name)
	}
	n.Conf.Apply(&cfg)
	s, err := r.Switch(n.Switch)
	if err != nil {
		return nil, err
	}
	return s.NewPort(n.Port, cfg)
}

// Switch is a learning Ethernet switch between netmap ports, VALE style: frames a
// port's user puts in a TX ring are forwarded when that ring is synced (by its user,
// by a ptnet host loop through Kring.SyncCSB, or by a BackendPort pump), copied once
// into the destination ports' RX rings.
//
// Concurrency: every method may be called from any goroutine. Forwarding passes of
// different source rings run in parallel: each holds its TX kring's lock and the
// switch lock shared, and takes a destination RX kring lock only to reserve and to
// complete slot leases; copying happens with no ring lock held. Attach, Detach, SetLookup
// and monitor changes take the switch lock exclusively, so they wait for passes in
// flight, and a pass never sees a half-attached port.
type Switch struct {
	name string
	mu   sync.RWMutex // shared by forwarding passes, exclusive for configuration

	// Guarded by mu.
	ports  [MaxPorts]*Port
	active []int // attached port indices, ascending
	custom Lookup
	learn  *Learning
}

func newSwitch(name string) *Switch {
	return &Switch{name: name, learn: NewLearning()}
}

// New returns a switch outside any registry (tests, embedders with their own naming).
func New(name string) (*Switch, error) {
	if err := CheckSwitchName(name); err != nil {
		return nil, err
	}
	return newSwitch(name), nil
}

// Name is the switch name.
func (s *Switch) Name() string { return s.name }

// Learning is the switch's learning table, for a custom Lookup that wraps the
// default (e.g. a firewall that drops some frames and learns-and-forwards the rest).
func (s *Switch) Learning() *Learning { return s.learn }

// SetLookup replaces the lookup function; nil restores the learning lookup. It waits
// for forwarding passes in flight, so after it returns every frame uses fn.
func (s *Switch) SetLookup(fn Lookup) {
	s.mu.Lock()
	s.custom = fn
	s.mu.Unlock()
}

// Ports lists the attached ports by index.
func (s *Switch) Ports() []*Port {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Port, 0, len(s.active))
	for _, i := range s.active {
		out = append(out, s.ports[i])
	}
	return out
}

// Port returns the port at index i, or nil.
func (s *Switch) Port(i int) *Port {
	if i < 0 || i >= MaxPorts {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.ports[i]
}

// PortByName returns the attached port with that name, or nil.
func (s *Switch) PortByName(name string) *Port {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, i := range s.active {
		if s.ports[i].name == name {
			return s.ports[i]
		}
	}
	return nil
}

// NewPort creates a netmap port with a private region (cfg.Name is replaced by name)
// and attaches it. Detach closes it.
func (s *Switch) NewPort(name string, cfg netmap.PortConfig) (*Port, error) {
	if name == "" {
		return nil, fmt.Errorf("vale: %s: empty port name", s.name)
	}
	cfg.Name = s.name + ":" + name
	np, err := netmap.NewPort(cfg)
	if err != nil {
		return nil, fmt.Errorf("vale: %s: %w", s.name, err)
	}
	p, err := s.attach(name, np, true)
	if err != nil {
		np.Close()
		return nil, err
	}
	return p, nil
}

// Attach makes an existing netmap port a switch port under name. The switch installs
// the sync function of the port's HW TX rings (so it must not be a pipe end or
// another switch's port); its RX rings keep their notify functions. Detach gives the
// port back unclosed.
func (s *Switch) Attach(name string, np *netmap.Port) (*Port, error) {
	return s.attach(name, np, false)
}

// attached holds every netmap port on some switch, so that one port is never
// attached twice (its TX sync function would be taken over).
var attachedPorts sync.Map // *netmap.Port -> *Port

func (s *Switch) attach(name string, np *netmap.Port, own bool) (*Port, error) {
	if np == nil || np.Region() == nil {
		return nil, fmt.Errorf("vale: %s: attach %q: no port", s.name, name)
	}
	if _, dup := attachedPorts.LoadOrStore(np, (*Port)(nil)); dup {
		return nil, fmt.Errorf("vale: %s: attach %q: netmap port %s is already on a switch; detach it first", s.name, name, np.Name())
	}
	p, err := s.attachLocked(name, np, own)
	if err != nil {
		attachedPorts.Delete(np)
		return nil, err
	}
	attachedPorts.Store(np, p)
	return p, nil
}

func (s *Switch) attachLocked(name string, np *netmap.Port, own bool) (*Port, error) {
	p := &Port{sw: s, name: name, np: np, own: own, bufSize: int(np.Region().BufSize())}
	p.fwd = make([]*fwdState, np.NumTxRings())
	for i := range p.fwd {
		p.fwd[i] = &fwdState{p: p, ring: i}
	}
	s.mu.Lock()
	idx := -1
	for i := range s.ports {
		if s.ports[i] == nil {
			if idx < 0 {
				idx = i
			}
		} else if s.ports[i].name == name {
			s.mu.Unlock()
			return nil, fmt.Errorf("vale: %s: attach %q: %w", s.name, name, ErrNameInUse)
		}
	}
	if idx < 0 {
		s.mu.Unlock()
		return nil, fmt.Errorf("vale: %s: attach %q: %w (%d ports)", s.name, name, ErrSwitchFull, MaxPorts)
	}
	p.idx = idx
	s.ports[idx] = p
	s.active = append(s.active, idx)
	sort.Ints(s.active)
	s.learn.Forget(idx) // a reused index starts clean
	s.mu.Unlock()
	for i, f := range p.fwd {
		np.TxRing(i).SetSync(f.sync)
	}
	return p, nil
}

// Detach removes p from the switch: its TX rings stop forwarding (a sync in progress
// finishes first), no pass delivers to it any more, and the learning table forgets
// it. A port made by NewPort is closed; one given to Attach is returned to its owner.
func (p *Port) Detach() error {
	s := p.sw
	s.mu.RLock()
	attached := s.ports[p.idx] == p
	s.mu.RUnlock()
	if !attached {
		return fmt.Errorf("vale: %s: detach %q: %w", s.name, p.name, ErrNotAttached)
	}
	// TX kring locks come before the switch lock (passes take them in that order).
	for i := range p.fwd {
		p.np.TxRing(i).SetSync(nil)
	}
	s.mu.Lock()
	if s.ports[p.idx] != p {
		s.mu.Unlock()
		return fmt.Errorf("vale: %s: detach %q: %w", s.name, p.name, ErrNotAttached)
	}
	s.ports[p.idx] = nil
	for i, v := range s.active {
		if v == p.idx {
			s.active = append(s.active[:i], s.active[i+1:]...)
			break
		}
	}
	s.learn.Forget(p.idx)
	p.mon = nil
	s.mu.Unlock()
	attachedPorts.Delete(p.np)
	if p.own {
		return p.np.Close()
	}
	return nil
}

// Monitor receives copies of frames passing a port (see AddMonitor). The pcap
// package's Writer is one. WriteFragments is called from forwarding passes, possibly
// several at once, with the switch lock held shared and no ring lock held: it must
// be safe for concurrent use, should be quick, must not retain frags and must not
// call methods of the Switch or its Ports (the calling pass holds the switch lock).
// Its error is counted (Counters.MonitorErrors), never returned to the sender.
type Monitor interface {
	WriteFragments(ts time.Time, frags [][]byte) error
}

// Direction selects which frames a monitor sees, from the port's point of view.
type Direction uint8

// Directions (netmap's /t and /r monitor flags).
const (
	MonitorTX   Direction = 1 << iota // frames the port sends into the switch
	MonitorRX                         // frames the switch delivers to the port
	MonitorBoth = MonitorTX | MonitorRX
)

type monitor struct {
	m   Monitor
	dir Direction
}

// AddMonitor starts copying frames of the given direction to m. TX frames are seen
// as taken from the ring (before the lookup, so dropped ones too); RX frames as
// delivered (after the copy into the RX ring). Timestamps are taken once per pass.
func (p *Port) AddMonitor(m Monitor, dir Direction) error {
	if m == nil || dir&MonitorBoth == 0 {
		return fmt.Errorf("vale: %s: monitor needs a writer and a direction", p.name)
	}
	s := p.sw
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ports[p.idx] != p {
		return fmt.Errorf("vale: %s: add monitor to %q: %w", s.name, p.name, ErrNotAttached)
	}
	// Copy on write: passes iterate the old slice without holding anything but RLock.
	p.mon = append(append([]monitor(nil), p.mon...), monitor{m, dir})
	return nil
}

// RemoveMonitor stops m on p. After it returns no pass calls m for this port.
func (p *Port) RemoveMonitor(m Monitor) {
	s := p.sw
	s.mu.Lock()
	defer s.mu.Unlock()
	var keep []monitor
	for _, x := range p.mon {
		if x.m != m {
			keep = append(keep, x)
		}
	}
	p.mon = keep
}
