// Command miniinit is a throwaway PID 1 that proves the QEMU test host
// before the guest agent exists: it loads modules, runs one command and
// powers off.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	_ = os.MkdirAll("/proc", 0o755)
	_ = os.MkdirAll("/sys", 0o755)
	_ = os.MkdirAll("/dev", 0o755)
	_ = unix.Mount("proc", "/proc", "proc", 0, "")
	_ = unix.Mount("sysfs", "/sys", "sysfs", 0, "")
	_ = unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	b, _ := os.ReadFile("/proc/cmdline")
	cmdline := string(b)
	for _, m := range strings.Split(arg(cmdline, "ptvmm.modules"), ",") {
		if m == "" {
			continue
		}
		f, err := os.Open("/lib/modules/" + m + ".ko")
		if err == nil {
			err = unix.FinitModule(int(f.Fd()), "", 0)
			f.Close()
		}
		if err != nil {
			fmt.Printf("miniinit: load %s: %v\n", m, err)
		}
	}
	fmt.Println("ptvmm-agent: ready")
	status := 0
	if c := strings.Fields(arg(cmdline, "ptvmm.cmd")); len(c) > 0 {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			status = 255
			if ee, ok := err.(*exec.ExitError); ok {
				status = ee.ExitCode()
			} else {
				fmt.Println("miniinit:", err)
			}
		}
	}
	fmt.Printf("ptvmm-agent: exit status %d\n", status)
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// arg returns key's value on the kernel command line; "..." may quote spaces.
func arg(cmdline, key string) string {
	i := strings.Index(cmdline, key+"=")
	if i < 0 {
		return ""
	}
	v := cmdline[i+len(key)+1:]
	if strings.HasPrefix(v, `"`) {
		v = v[1:]
		if j := strings.IndexByte(v, '"'); j >= 0 {
			return v[:j]
		}
		return v
	}
	if j := strings.IndexAny(v, " \n"); j >= 0 {
		return v[:j]
	}
	return v
}
