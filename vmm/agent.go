package vmm

import (
	"bytes"
	"io"
	"strings"
	"sync"

	"github.com/ptvmm/ptvmm/guest/agent/protocol"
)

// maxLine bounds the bytes AgentWatcher keeps of an unterminated line; the lines it
// looks for are short, so a longer line keeps only its tail.
const maxLine = 512

// AgentWatcher passes console output through to a writer and watches it for the
// guest agent's lines: "ptvmm-agent: ready" and "ptvmm-agent: exit status N", and
// for the kernel's "Kernel panic - not syncing: ..." (with panic=-1 a panicking guest
// reboots, which would otherwise look like a clean shutdown).
//
// Concurrency: Write is called by the UART (one writer at a time); ExitStatus and
// Ready may be called from any goroutine.
type AgentWatcher struct {
	w io.Writer

	mu        sync.Mutex
	line      []byte
	status    int
	hasStatus bool
	ready     chan struct{}
	isReady   bool
	panicMsg  string
}

// panicPrefix starts the kernel's panic line.
const panicPrefix = "Kernel panic - not syncing: "

// NewAgentWatcher returns a watcher writing through to w (nil: discard).
func NewAgentWatcher(w io.Writer) *AgentWatcher {
	if w == nil {
		w = io.Discard
	}
	return &AgentWatcher{w: w, ready: make(chan struct{})}
}

// Write scans p and then writes it to the underlying writer.
func (a *AgentWatcher) Write(p []byte) (int, error) {
	a.mu.Lock()
	rest := p
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			if len(rest) > maxLine {
				rest = rest[len(rest)-maxLine:]
			}
			a.line = append(a.line, rest...)
			if len(a.line) > maxLine {
				a.line = append(a.line[:0], a.line[len(a.line)-maxLine:]...)
			}
			break
		}
		a.line = append(a.line, rest[:i]...)
		a.scan(string(a.line))
		a.line = a.line[:0]
		rest = rest[i+1:]
	}
	a.mu.Unlock()
	return a.w.Write(p)
}

func (a *AgentWatcher) scan(line string) {
	if n, ok := protocol.ParseExitStatus(line); ok {
		a.status, a.hasStatus = n, true
		return
	}
	if i := strings.Index(line, panicPrefix); i >= 0 && a.panicMsg == "" {
		a.panicMsg = strings.TrimSpace(line[i+len(panicPrefix):])
		if a.panicMsg == "" {
			a.panicMsg = "(no message)"
		}
		return
	}
	if !a.isReady && strings.HasSuffix(strings.TrimSpace(line), protocol.ReadyLine) {
		a.isReady = true
		close(a.ready)
	}
}

// ExitStatus is the status from the last exit status line seen, if any.
func (a *AgentWatcher) ExitStatus() (int, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status, a.hasStatus
}

// Panic is the message of the first kernel panic seen, if any.
func (a *AgentWatcher) Panic() (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.panicMsg, a.panicMsg != ""
}

// Ready is closed when the agent's ready line has been seen.
func (a *AgentWatcher) Ready() <-chan struct{} { return a.ready }
