// Command vmrun boots a Linux guest on KVM with its console on stdio:
//
//	vmrun [-kernel PATH] [-initrd PATH] [-append STR] [-m 512M] [-cpus 2] [-v] [-force]
//	      [-net virtio,tap=NAME|port=PORT[,mac=MAC][,queues=N][,mtu=N][,host-ip=ADDR/LEN]]
//	      [-net ptnet,port=PORT[,poll=D]]
//	      [-s SLOT,virtio-net,TAP|PORT] [-s SLOT,ptnet,PORT] [-switch-tap valeX:TAP]
//	      [-switch PATH]
//	vmrun switch [-socket PATH]
//	vmrun vale [-switch PATH] list|attach SWITCH TAP|detach SWITCH TAP|capture PORT FILE
//
// A PORT is a netmap port inside vmrun: "valeX:Y" (port Y on switch valeX, which is
// created on first use) or "name{N" / "name}N" (the two ends of pipe N). A ptnet NIC
// is netmap passthrough: the guest maps the port's rings and buffers (a ptnetmap
// memdev is added for the port's memory). -switch-tap joins a host TAP to a switch.
// With -switch PATH the ports are in the switch service at PATH (`vmrun switch`),
// shared with other vmrun processes and host programs; `vmrun vale` lists and
// manages it.
//
// Without -kernel it boots the kernel `make kernel` provisioned; without -initrd, an
// initramfs holding the ptvmm guest agent as /init: vmrun itself when it is statically
// linked (started as /init or ptvmm-agent, vmrun is the agent; see guest/agent), else
// the agent built with the go command. vmrun exits with the status the
// agent reports ("ptvmm-agent: exit status N"), 0 when the guest shuts down without
// one, and 1 with a message when the VMM fails or the guest kernel panicked. With a terminal on stdin, the
// terminal is raw (keys go to the guest); Ctrl-A x quits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/backends/vale"
	"github.com/ptvmm/ptvmm/guest/agent"
	"github.com/ptvmm/ptvmm/internal/kcache"
	"github.com/ptvmm/ptvmm/vmm"
)

// mainUsage heads vmrun -h.
const mainUsage = `usage: vmrun [flags]            boot a Linux guest (flags below)
       vmrun bench [flags]      passthrough against virtio-net, one table
       vmrun switch [flags]     the switch service shared by many vmruns
       vmrun vale [flags] CMD   list, attach, detach, capture switch ports
`

// defaultAppend suits the agent initramfs: serial console, reboot through the
// i8042 (our shutdown), reboot instead of hanging on panic, one UART probed.
const defaultAppend = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 no_timer_check"

func main() {
	start := time.Now()
	// In the guest, a static vmrun packed as /init is the guest agent.
	if len(os.Args) > 0 && agent.Invoked(os.Args[0]) {
		agent.Main() // never returns
	}
	os.Exit(dispatch(start, os.Args[1:]))
}

// subcommands are vmrun's commands besides booting a guest (the default).
var subcommands = map[string]func(args []string) int{
	"bench":  runBench,
	"switch": runSwitch,
	"vale":   runVale,
}

// dispatch runs a subcommand, or boots a guest when the first argument is none.
func dispatch(start time.Time, args []string) int {
	if len(args) > 0 {
		if cmd, ok := subcommands[args[0]]; ok {
			return cmd(args[1:])
		}
	}
	return run(start, args)
}

func run(start time.Time, args []string) int {
	fs := flag.NewFlagSet("vmrun", flag.ContinueOnError)
	kernel := fs.String("kernel", "", "bzImage to boot (default: the kernel 'make kernel' provisions)")
	initrd := fs.String("initrd", "", "initramfs (default: one with the ptvmm guest agent as /init)")
	appendArgs := fs.String("append", defaultAppend, "kernel command line")
	memFlag := fs.String("m", "512M", "guest RAM, with suffix K, M or G (no suffix: MiB)")
	cpus := fs.Int("cpus", 1, "number of vCPUs")
	verbose := fs.Bool("v", false, "print timings and VMM events to stderr")
	force := fs.Bool("force", os.Getenv("PTVMM_FORCE") != "", "boot even where KVM has no hardware virtualization (also $PTVMM_FORCE)")
	var nics nicFlags
	var switchTaps [][2]string
	fs.Var(netFlag{&nics}, "net", "add a NIC: "+netUsage+"; "+portForms+" (repeatable)")
	fs.Var(slotFlag{&nics}, "s", "add a NIC bhyve-style: "+slotUsage+" (repeatable)")
	fs.Var(switchTapFlag{&switchTaps}, "switch-tap", "join host TAP to a switch: valeX:TAPNAME (repeatable)")
	switchSock := fs.String("switch", "", "put the NICs' ports (PORT) in the switch service listening at PATH (see vmrun switch; \"default\": "+vale.DefaultSocketPath()+"); without it they are in this process")
	if status, ok := parseFlags(fs, args, mainUsage, os.Stderr); !ok {
		return status
	}
	if err := checkNICs(nics.nics); err != nil {
		fmt.Fprintf(os.Stderr, "vmrun: %v\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "vmrun: unexpected argument %q; see vmrun -h\n", fs.Arg(0))
		return 2
	}
	if *switchSock != "" && len(switchTaps) > 0 {
		fmt.Fprintln(os.Stderr, "vmrun: -switch-tap joins a TAP to a switch in this process; with -switch use `vmrun vale attach valeX TAP`")
		return 2
	}
	mem, err := parseSize(*memFlag)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmrun: -m: %v\n", err)
		return 2
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// Check the host before building anything.
	if err := vmm.CheckHost(*force); err != nil {
		return hostError(err)
	}
	cfg := vmm.Config{Cmdline: *appendArgs, MemSize: mem, CPUs: *cpus, Force: *force, Log: log, Start: start}
	if *switchSock != "" {
		// Only when asked: a vmrun that joined whatever service happens to
		// listen at the default path would put its VM on switches other
		// processes share, and hand them its CSB pages, depending on what else
		// runs on the host.
		path := *switchSock
		if path == "default" {
			path = vale.DefaultSocketPath()
		}
		sw, err := vale.Dial(path)
		if err != nil {
			return hostError(err)
		}
		defer sw.Close() // after vm.Close (deferred later): the NICs detach their ports first
		sw.OnDown(func(err error) {
			// Logged once: every NIC on the service is down from here on.
			fmt.Fprintf(os.Stderr, "\r\nvmrun: %v; the NICs on it are down\n", err)
		})
		cfg.Network = vmm.NewServiceNetwork(sw)
		cfg.Memory.MemFD = true // the service maps ptnet CSBs from guest RAM
	}
	if cfg.Kernel, err = kernelPath(*kernel); err != nil {
		fmt.Fprintf(os.Stderr, "vmrun: %v\n", err)
		return 1
	}
	if *initrd != "" {
		cfg.Initrd = *initrd
	} else if mods, err := guestModules(*kernel, nics.nics, log); err != nil {
		fmt.Fprintf(os.Stderr, "vmrun: %v\n", err)
		return 1
	} else if cfg.Initrd, cfg.InitrdImage, err = defaultInitrd(log, mods); err != nil {
		fmt.Fprintf(os.Stderr, "vmrun: %v\n", err)
		return 1
	}
	log.Debug("inputs ready", "since_start", time.Since(start))

	watch := vmm.NewAgentWatcher(os.Stdout)
	cfg.Console = watch
	ctx, cancel := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer cancel()
	var userQuit bool
	if restore, ok := rawTerminal(int(os.Stdin.Fd())); ok {
		defer restore()
		cfg.Input = &escapeReader{r: os.Stdin, quit: func() { userQuit = true; cancel() }}
	} else {
		cfg.Input = os.Stdin
	}

	vm, err := vmm.New(cfg)
	if err != nil {
		return hostError(err)
	}
	defer vm.Close()
	defer vmm.DefaultNetwork.Close() // after the NICs: removes TAPs it created
	for _, st := range switchTaps {
		if err := vmm.DefaultNetwork.AttachTap(st[0], st[1]); err != nil {
			return hostError(err)
		}
	}
	for i, n := range nics.nics {
		nd, err := vm.AddNIC(i, n)
		if err != nil {
			return hostError(err)
		}
		defer nd.Close()
	}
	err = vm.Run(ctx)
	t := vm.Timings()
	log.Debug("timings", "start_to_first_kvm_run", t.FirstEntry, "start_to_first_exit", t.FirstExit,
		"kvm_open", t.KVMOpen, "memory", t.MemoryMapped, "loaded", t.GuestLoaded, "vcpus", t.VCPUsCreated,
		"total", time.Since(start))
	switch {
	case err == nil:
	case errors.Is(err, context.Canceled):
		if userQuit {
			return 0
		}
		fmt.Fprintln(os.Stderr, "\r\nvmrun: interrupted")
		return 130
	default:
		fmt.Fprintf(os.Stderr, "\r\nvmrun: %v\n", err)
		return 1
	}
	if n, ok := watch.ExitStatus(); ok {
		return n
	}
	if msg, ok := watch.Panic(); ok {
		fmt.Fprintf(os.Stderr, "\r\nvmrun: guest kernel panic: %s\n", msg)
		return 1
	}
	return 0
}

// hostError prints one line for err and returns exit status 1.
func hostError(err error) int {
	switch {
	case errors.Is(err, vmm.ErrNoHardwareVirt):
		fmt.Fprintln(os.Stderr, "vmrun: this host's KVM has no hardware virtualization (no vmx/svm CPU flag), so Linux would crawl; `make demo` runs vmrun inside the QEMU test host (-force tries here anyway)")
	case errors.Is(err, vmm.ErrNoKVM):
		fmt.Fprintf(os.Stderr, "vmrun: %v; load the kvm module and make /dev/kvm accessible (or run `make demo` for the QEMU test host)\n", err)
	default:
		fmt.Fprintf(os.Stderr, "vmrun: %v\n", err)
	}
	return 1
}

// escapeReader passes input through until Ctrl-A x, which calls quit. Ctrl-A Ctrl-A
// sends one Ctrl-A.
type escapeReader struct {
	r       io.Reader
	quit    func()
	pending bool // saw Ctrl-A
}

const ctrlA = 0x01

func (e *escapeReader) Read(p []byte) (int, error) {
	for {
		n, err := e.r.Read(p)
		out := 0
		for _, b := range p[:n] {
			if e.pending {
				e.pending = false
				switch b {
				case 'x', 'X':
					e.quit()
					return out, io.EOF
				case ctrlA:
					p[out] = ctrlA
					out++
				}
				continue
			}
			if b == ctrlA {
				e.pending = true
				continue
			}
			p[out] = b
			out++
		}
		if out > 0 || err != nil {
			return out, err
		}
	}
}

// guestModules are the modules the default initramfs loads for the NICs: from the
// kernel cache, so only when the kernel is the cached one (-kernel not given).
func guestModules(kernelFlag string, nics []vmm.NIC, log *slog.Logger) ([]string, error) {
	if len(nics) == 0 {
		return nil, nil
	}
	if kernelFlag != "" {
		log.Warn("with -kernel, the default initramfs carries no NIC drivers; give an -initrd whose agent loads them (ptvmm.modules=)")
		return nil, nil
	}
	dir, err := kcache.Dir()
	if err != nil {
		return nil, err
	}
	return nicModules(dir, nics)
}
