package agent

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// stdio is where a built-in command reads and writes.
type stdio struct {
	in       io.Reader
	out, err io.Writer
}

// applet is a built-in command; it returns the exit status.
type applet struct {
	usage string
	run   func(args []string, io stdio) int
}

var applets map[string]applet

func init() {
	// Assigned here because help refers to the map.
	applets = map[string]applet{
		"echo":  {"echo [-n] [word...]", runEcho},
		"cat":   {"cat [file...]", runCat},
		"ls":    {"ls [-l] [path...]", runLs},
		"exit":  {"exit [status]", runExit},
		"true":  {"true", func([]string, stdio) int { return 0 }},
		"false": {"false", func([]string, stdio) int { return 1 }},
		"uname": {"uname [-asnrvm]", runUname},
		"nproc": {"nproc", runNproc},
		"sleep": {"sleep seconds|duration", runSleep},
		"kvm":   {"kvm (print the /dev/kvm API version)", runKVM},
		"kill":  {"kill [-signum] pid...", runKill},
		"help":  {"help", runHelp},
		// pktgen.go: a packet generator over a ptnet NIC.
		"pktgen": {pktgenUsage, runPktgen},
		/* net*.go */ "ifconfig": {ifconfigUsage, runIfconfig}, "ping": {pingUsage, runPing},
	}
}

func runHelp(_ []string, s stdio) int {
	names := make([]string, 0, len(applets))
	for n := range applets {
		names = append(names, n)
	}
	slices.Sort(names)
	fmt.Fprintln(s.out, "usage: ptvmm-agent <command> [args]; commands:")
	for _, n := range names {
		fmt.Fprintln(s.out, "  "+applets[n].usage)
	}
	return 0
}

func runEcho(args []string, s stdio) int {
	nl := "\n"
	if len(args) > 0 && args[0] == "-n" {
		nl, args = "", args[1:]
	}
	if _, err := io.WriteString(s.out, strings.Join(args, " ")+nl); err != nil {
		return 1
	}
	return 0
}

func runCat(args []string, s stdio) int {
	if len(args) == 0 {
		args = []string{"-"}
	}
	status := 0
	for _, a := range args {
		var err error
		if a == "-" {
			_, err = io.Copy(s.out, s.in)
		} else {
			err = catFile(a, s.out)
		}
		if err != nil {
			fmt.Fprintf(s.err, "cat: %v\n", err)
			status = 1
		}
	}
	return status
}

func catFile(name string, w io.Writer) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	// /proc and /sys files report size 0, so copy until EOF.
	_, err = io.Copy(w, f)
	return err
}

func runLs(args []string, s stdio) int {
	long := false
	var paths []string
	for _, a := range args {
		if a == "-l" {
			long = true
			continue
		}
		paths = append(paths, a)
	}
	if len(paths) == 0 {
		paths = []string{"."}
	}
	w := bufio.NewWriter(s.out)
	defer w.Flush()
	status := 0
	for i, p := range paths {
		st, err := os.Lstat(p)
		if err != nil {
			fmt.Fprintf(s.err, "ls: %v\n", err)
			status = 1
			continue
		}
		if !st.IsDir() {
			lsLine(w, filepath.Dir(p), st, long, p)
			continue
		}
		if len(paths) > 1 {
			if i > 0 {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "%s:\n", p)
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			fmt.Fprintf(s.err, "ls: %v\n", err)
			status = 1
			continue
		}
		for _, e := range ents { // ReadDir sorts by name
			info, err := e.Info()
			if err != nil {
				fmt.Fprintf(s.err, "ls: %v\n", err)
				status = 1
				continue
			}
			lsLine(w, p, info, long, e.Name())
		}
	}
	return status
}

func lsLine(w io.Writer, dir string, st os.FileInfo, long bool, name string) {
	if !long {
		fmt.Fprintln(w, name)
		return
	}
	suffix := ""
	if st.Mode()&os.ModeSymlink != 0 {
		if t, err := os.Readlink(filepath.Join(dir, st.Name())); err == nil {
			suffix = " -> " + t
		}
	}
	fmt.Fprintf(w, "%s %10d %s%s\n", st.Mode(), st.Size(), name, suffix)
}

func runExit(args []string, s stdio) int {
	if len(args) == 0 {
		return 0
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 0 || n > 255 {
		fmt.Fprintf(s.err, "exit: status %q: want 0..255\n", args[0])
		return 2
	}
	return n
}

func runUname(args []string, s stdio) int {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		fmt.Fprintf(s.err, "uname: %v\n", err)
		return 1
	}
	fields := map[byte]string{
		's': unix.ByteSliceToString(u.Sysname[:]),
		'n': unix.ByteSliceToString(u.Nodename[:]),
		'r': unix.ByteSliceToString(u.Release[:]),
		'v': unix.ByteSliceToString(u.Version[:]),
		'm': unix.ByteSliceToString(u.Machine[:]),
	}
	want := map[byte]bool{}
	for _, a := range args {
		if len(a) < 2 || a[0] != '-' {
			fmt.Fprintf(s.err, "uname: unknown argument %q\n", a)
			return 2
		}
		for _, c := range []byte(a[1:]) {
			if c == 'a' {
				for k := range fields {
					want[k] = true
				}
				continue
			}
			if _, ok := fields[c]; !ok {
				fmt.Fprintf(s.err, "uname: unknown option -%c\n", c)
				return 2
			}
			want[c] = true
		}
	}
	if len(want) == 0 {
		want['s'] = true
	}
	var out []string
	for _, c := range []byte("snrvm") {
		if want[c] {
			out = append(out, fields[c])
		}
	}
	fmt.Fprintln(s.out, strings.Join(out, " "))
	return 0
}

func runNproc(_ []string, s stdio) int {
	fmt.Fprintln(s.out, runtime.NumCPU())
	return 0
}

// parseSleep accepts seconds as a decimal number, as sleep(1) does, or a Go
// duration such as 150ms.
func parseSleep(a string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(a, 64); err == nil {
		if f < 0 || f > 1e9 {
			return 0, fmt.Errorf("sleep: %q out of range", a)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(a)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("sleep: %q: want seconds or a duration like 150ms", a)
	}
	return d, nil
}

func runSleep(args []string, s stdio) int {
	if len(args) != 1 {
		fmt.Fprintln(s.err, "usage: sleep seconds|duration")
		return 2
	}
	d, err := parseSleep(args[0])
	if err != nil {
		fmt.Fprintln(s.err, err)
		return 2
	}
	time.Sleep(d)
	return 0
}

// kvmGetAPIVersion is KVM_GET_API_VERSION, _IO(0xAE, 0x00).
const kvmGetAPIVersion = 0xAE00

func runKVM(_ []string, s stdio) int {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(s.err, "kvm: open /dev/kvm: %v\n", err)
		return 1
	}
	defer unix.Close(fd)
	v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion)
	if err != nil {
		fmt.Fprintf(s.err, "kvm: KVM_GET_API_VERSION: %v\n", err)
		return 1
	}
	fmt.Fprintf(s.out, "kvm: API version %d\n", v)
	return 0
}

func runKill(args []string, s stdio) int {
	sig := unix.SIGTERM
	if len(args) > 0 && strings.HasPrefix(args[0], "-") {
		n, err := strconv.Atoi(args[0][1:])
		if err != nil || n < 0 || n > 64 {
			fmt.Fprintf(s.err, "kill: signal %q: want a number 0..64\n", args[0])
			return 2
		}
		sig, args = unix.Signal(n), args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(s.err, "usage: kill [-signum] pid...")
		return 2
	}
	status := 0
	for _, a := range args {
		pid, err := strconv.Atoi(a)
		if err == nil {
			err = unix.Kill(pid, sig)
		}
		if err != nil {
			fmt.Fprintf(s.err, "kill %s: %v\n", a, err)
			status = 1
		}
	}
	return status
}
