package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	good := map[string]uint64{"512M": 512 << 20, "2G": 2 << 30, "65536k": 64 << 20, "256": 256 << 20, " 1g ": 1 << 30}
	for in, want := range good {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "0", "-1G", "12X", "1.5G", "99999999999G"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestEscapeReader(t *testing.T) {
	quit := 0
	r := &escapeReader{r: strings.NewReader("ab\x01\x01c\x01zd\x01xignored"), quit: func() { quit++ }}
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "ab\x01cd" || quit != 1 {
		t.Errorf("read %q, quit %d; want \"ab\\x01cd\" and one quit", got, quit)
	}
	// An escape split across reads still works.
	quit = 0
	r = &escapeReader{r: io.MultiReader(strings.NewReader("q\x01"), strings.NewReader("x")), quit: func() { quit++ }}
	got, _ = io.ReadAll(r)
	if string(got) != "q" || quit != 1 {
		t.Errorf("split escape: read %q, quit %d", got, quit)
	}
}

func TestKernelPath(t *testing.T) {
	if p, err := kernelPath("/some/bzImage"); err != nil || p != "/some/bzImage" {
		t.Errorf("explicit kernel: %q %v", p, err)
	}
	dir := t.TempDir()
	t.Setenv("PTVMM_KERNEL_DIR", dir)
	if _, err := kernelPath(""); err == nil || !strings.Contains(err.Error(), "make kernel") {
		t.Errorf("missing cache: %v, want a hint to run make kernel", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte{0}, 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := kernelPath(""); err != nil || p != filepath.Join(dir, "vmlinuz") {
		t.Errorf("cached kernel: %q %v", p, err)
	}
}

func TestUsageErrors(t *testing.T) {
	if got := run(time.Now(), []string{"extra"}); got != 2 {
		t.Errorf("stray argument: status %d, want 2", got)
	}
	if got := run(time.Now(), []string{"-m", "lots"}); got != 2 {
		t.Errorf("bad -m: status %d, want 2", got)
	}
	if got := run(time.Now(), []string{"-net", "virtio,tap=t0", "-s", "3,virtio-net,t0"}); got != 2 {
		t.Errorf("two NICs on one TAP: status %d, want 2", got)
	}
	if got := run(time.Now(), []string{"-nosuchflag"}); got != 2 {
		t.Errorf("unknown flag: status %d, want 2", got)
	}
}
