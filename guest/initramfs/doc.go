// Package initramfs builds the initramfs a ptvmm Linux guest boots with: a
// newc cpio archive (optionally gzipped) holding the guest agent as /init,
// kernel modules under /lib/modules/ptvmm with their load order in
// /etc/ptvmm/modules, an optional command in /etc/ptvmm/cmd, extra files, and
// the directories and /dev/console node early boot needs. BuildAgent compiles
// the agent binary. See package guest/agent/protocol for what the agent reads.
//
// Build and BuildAgent keep no state and are safe for concurrent use.
package initramfs
