// Command agent is ptvmm's guest agent: a static binary that a Linux guest
// runs as /init (PID 1) from an initramfs built by package guest/initramfs.
//
// As PID 1 it mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /tmp and /run;
// loads the kernel modules listed in /etc/ptvmm/modules and then in
// ptvmm.modules=a,b,c (files under /lib/modules/ptvmm, already loaded is
// fine; <module>.<param>=<value> on the kernel command line is passed to
// the module, as modprobe does); prints "ptvmm-agent: ready"; runs ptvmm.cmd="..." (or
// /etc/ptvmm/cmd) with its output on the console; prints
// "ptvmm-agent: exit status N"; syncs and ends the VM as ptvmm.shutdown says
// (reboot, the default, becomes an i8042 reset with reboot=k; poweroff; halt).
// It never returns from main: a failure prints "ptvmm-agent: error: ..." and
// still shuts down. The keys and lines are defined in guest/agent/protocol.
//
// Installed as /bin/ptvmm-agent too, it offers a few commands so that tests
// need no shell or busybox: ptvmm-agent echo|cat|ls|exit|uname|nproc|sleep|
// kill|true|false|kvm (see "ptvmm-agent help"). It also dispatches on its own name,
// so a link named echo to it acts as echo.
package main
