package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ptvmm/ptvmm/internal/kcache"
)

// parseSize reads 512M, 1G, 65536K or a bare number of MiB.
func parseSize(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	mult := uint64(1 << 20)
	if s != "" {
		switch s[len(s)-1] {
		case 'k', 'K':
			mult, s = 1<<10, s[:len(s)-1]
		case 'm', 'M':
			mult, s = 1<<20, s[:len(s)-1]
		case 'g', 'G':
			mult, s = 1<<30, s[:len(s)-1]
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a size like 512M or 2G", s)
	}
	if n > (1<<46)/mult {
		return 0, fmt.Errorf("%s is too large", s)
	}
	return n * mult, nil
}

// kernelPath is -kernel, or vmlinuz in the kernel cache `make kernel` fills.
func kernelPath(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	dir, err := kcache.Dir()
	if err != nil {
		return "", fmt.Errorf("no -kernel given and %w", err)
	}
	p := filepath.Join(dir, "vmlinuz")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no -kernel given and %s is missing: run `make kernel`", p)
	}
	return p, nil
}

// rawTerminal puts fd in raw mode if it is a terminal and returns how to restore it.
func rawTerminal(fd int) (restore func(), ok bool) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, false // not a terminal
	}
	t := *old
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return nil, false
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }, true
}
