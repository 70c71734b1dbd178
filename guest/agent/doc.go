// Package agent is ptvmm's guest agent: the program a Linux guest runs as
// /init (PID 1) from an initramfs built by package guest/initramfs. Main is
// its entry point. Command guest/agent/cmd/ptvmm-agent builds it as a static
// binary of its own; cmd/vmrun carries it too, busybox style, and runs Main
// when Invoked says it was started as /init or as ptvmm-agent, so a static
// vmrun can pack itself as a guest's /init.
//
// As PID 1 it:
//   - mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /tmp and /run;
//   - loads the modules listed in /etc/ptvmm/modules, then those in
//     ptvmm.modules=a,b,c (files under /lib/modules/ptvmm; already loaded is
//     fine), passing <module>.<param>=<value> kernel parameters to them as
//     modprobe does;
//   - prints "ptvmm-agent: ready";
//   - runs ptvmm.cmd="..." (or /etc/ptvmm/cmd) with the console as stdio,
//     /etc/ptvmm/env added to its environment and ptvmm.timeout=<seconds>
//     as an optional limit;
//   - prints "ptvmm-agent: exit status N";
//   - syncs and ends the VM as ptvmm.shutdown says: reboot (default; an
//     i8042 reset with reboot=k), poweroff or halt.
//
// As PID 1, Main never returns and survives signals: a failure prints
// "ptvmm-agent: error: ..." and still shuts down. The keys, paths and lines
// are defined in guest/agent/protocol.
//
// Installed as /bin/ptvmm-agent too, it offers a few commands so that tests
// need no shell or busybox: ptvmm-agent echo|cat|ls|exit|uname|nproc|sleep|
// kill|true|false|kvm (see "ptvmm-agent help"); ifconfig (link up and an
// address, over netlink) and ping (ICMP echo with iputils' output) for a
// guest on a NIC; pktgen over a ptnet NIC. It also dispatches on the
// name it was run as, so a link named echo to it acts as echo.
package agent
