// Command ptvmm-agent is the guest agent (package guest/agent) on its own: a
// static binary that package guest/initramfs packs as a guest's /init. See
// the agent package for what it does.
package main

import "github.com/ptvmm/ptvmm/guest/agent"

func main() { agent.Main() }
