package e2e

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ptvmm/ptvmm/vmm"
)

// libGuest is an inner guest run through the vmm library with its console
// captured line by line and watched for the agent's lines.
type libGuest struct {
	c     *console
	watch *vmm.AgentWatcher
	vm    *vmm.VM
	pw    *os.File
	done  chan struct{}
}

// newLibGuest creates the VM for cfg, whose Console and Start it sets. The VM is
// closed when the test ends, so devices the caller closes with defer go first
// (their ioeventfds and irqfds live on the VM fd).
func newLibGuest(t *testing.T, cfg vmm.Config) *libGuest {
	t.Helper()
	g := &libGuest{c: &console{start: time.Now()}, done: make(chan struct{})}
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	g.pw = pw
	go func() {
		g.c.feed(pr)
		pr.Close()
		close(g.done)
	}()
	g.watch = vmm.NewAgentWatcher(pw)
	cfg.Console, cfg.Start = g.watch, g.c.start
	if g.vm, err = vmm.New(cfg); err != nil {
		g.endConsole()
		require.NoError(t, err)
	}
	t.Cleanup(func() { g.vm.Close() })
	return g
}

// run runs the guest for at most bootTimeout and returns once its console has
// been read to the end.
func (g *libGuest) run() error {
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	err := g.vm.Run(ctx)
	g.endConsole()
	return err
}

func (g *libGuest) endConsole() {
	g.pw.Close()
	<-g.done
}
