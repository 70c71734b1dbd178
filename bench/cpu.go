package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// The micro and linux tiers run a guest in this process: its vCPU threads' time
// in guest mode is the guest's CPU, which the kernel keeps per process as
// guest_time (/proc/self/stat field 43, in clock ticks; it is also counted in
// utime). So guest CPU = guest_time, host CPU = the process's user+system time
// less guest_time and less the far end's thread. A tick is 10 ms (USER_HZ 100).

// clockTick is USER_HZ's period, which Linux fixes at 100 Hz for /proc.
const clockTick = 10 * time.Millisecond

// guestTime is the time this process's vCPUs spent in guest mode.
func guestTime() time.Duration {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	d, err := parseGuestTime(b)
	if err != nil {
		return 0
	}
	return d
}

// parseGuestTime reads guest_time from a /proc/PID/stat line. The command name
// (field 2) is in parentheses and may hold spaces or parentheses, so fields are
// counted from the last ')'.
func parseGuestTime(stat []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("bench: /proc/self/stat: no command name")
	}
	f := bytes.Fields(stat[i+1:])
	const field = 43 - 3 // fields after the name start at 3 (state)
	if len(f) <= field {
		return 0, fmt.Errorf("bench: /proc/self/stat: %d fields, no guest_time", len(f)+2)
	}
	ticks, err := strconv.ParseUint(string(f[field]), 10, 63)
	if err != nil {
		return 0, fmt.Errorf("bench: /proc/self/stat guest_time: %w", err)
	}
	return time.Duration(ticks) * clockTick, nil
}

// cpuMark is the CPU clocks at one instant of a run.
type cpuMark struct {
	proc, guest, peer time.Duration
}

// cpuSplit is what a run's guest, host and far end used between two marks.
func cpuSplit(a, b cpuMark) (guest, host, peer time.Duration) {
	guest = max(b.guest-a.guest, 0)
	peer = max(b.peer-a.peer, 0)
	host = max(b.proc-a.proc-guest-peer, 0)
	return guest, host, peer
}
