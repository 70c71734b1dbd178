package netmap

import (
	"fmt"
	"sync"
)

// PipeTable hands out pipe ends by netmap name ("x{1" master, "x}1" slave): the first
// Open of either end creates the pair, the other end is then opened from the same
// pair. Each end can be open once. When an end closes and its peer is closed or was
// never opened, the pair is freed and the name can be used again.
//
// Concurrency: safe for concurrent use.
type PipeTable struct {
	mu    sync.Mutex
	pipes map[string]*pipeEntry
}

type pipeEntry struct {
	ends   [2]*Port
	given  [2]bool
	closed [2]bool
}

// Open returns the pipe end named name. cfg sizes the pair when it is created (its
// Name and ring counts are ignored); the name's @conf: values override it.
func (t *PipeTable) Open(name string, cfg PortConfig) (*Port, error) {
	n, err := ParseName(name)
	if err != nil {
		return nil, err
	}
	if !n.Pipe {
		return nil, fmt.Errorf("netmap: %q is not a pipe name (want name{N or name}N)", name)
	}
	n.Conf.Apply(&cfg)
	end := 0
	if n.Kind == KindPipeSlave {
		end = 1
	}
	key := n.Base + "{" + n.PipeID
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pipes == nil {
		t.pipes = map[string]*pipeEntry{}
	}
	e := t.pipes[key]
	if e == nil {
		m, s, err := NewPipe(n.Base, n.PipeID, cfg)
		if err != nil {
			return nil, err
		}
		e = &pipeEntry{ends: [2]*Port{m, s}}
		t.pipes[key] = e
		for i := range e.ends {
			e.ends[i].OnClose(func() { t.closed(key, e, i) })
		}
	}
	if e.given[end] {
		return nil, fmt.Errorf("netmap: pipe end %q is in use (open, or closed while its peer is still open)", name)
	}
	e.given[end] = true
	return e.ends[end], nil
}

// closed runs (from Port.Close) when end i of e closes.
func (t *PipeTable) closed(key string, e *pipeEntry, i int) {
	t.mu.Lock()
	e.closed[i] = true
	o := 1 - i
	var other *Port
	if !e.given[o] && !e.closed[o] {
		other = e.ends[o]
	}
	if e.closed[o] || other != nil {
		if t.pipes[key] == e {
			delete(t.pipes, key)
		}
	}
	t.mu.Unlock()
	if other != nil {
		other.Close() // never handed out: nobody else closes it
	}
}
