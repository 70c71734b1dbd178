// Package protocol is the contract between the guest agent (the /init of a
// ptvmm Linux guest) and the host side that boots it: the kernel command line
// keys the agent reads, the files it reads from the initramfs, and the lines
// it prints on the console. It has no dependencies so that both the static
// agent binary and host tools can import it.
//
// The agent prints, each on a line of its own:
//
//	ptvmm-agent: ready                  modules loaded, command about to start
//	ptvmm-agent: exit status N          the command ended with status N
//	ptvmm-agent: error: ...             something failed; the agent still shuts down
//
// N is the command's exit code, 127 if it could not be found, 126 if it could
// not be executed, 128+signal if a signal killed it.
//
// All functions are pure and safe for concurrent use.
package protocol
