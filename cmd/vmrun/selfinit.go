package main

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/ptvmm/ptvmm/guest/initramfs"
	"github.com/ptvmm/ptvmm/internal/kcache"
	"github.com/ptvmm/ptvmm/vmm"
)

// errDynamic is what a vmrun that cannot supply the guest's /init says.
var errDynamic = errors.New("no -initrd given, and this vmrun is dynamically linked, so it cannot be the guest's /init" +
	" (building the guest agent with go failed too; -v says why): give -initrd, or build vmrun with CGO_ENABLED=0 (make build)")

// staticExecutable reports whether the ELF file at path runs without a dynamic
// loader (no PT_INTERP program header) on the guest's architecture, x86-64:
// only such a binary can be /init of an initramfs holding nothing else.
func staticExecutable(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return false, nil
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// defaultInitrd is the guest agent initramfs: one with this vmrun (which carries
// the agent) as /init, else one with the agent built now. mods are kernel modules
// the agent loads first (the NICs' drivers).
func defaultInitrd(log *slog.Logger, mods []string) (path string, image []byte, err error) {
	self, err := os.Executable()
	if err != nil {
		log.Debug("cannot find this vmrun's executable", "err", err)
		self = ""
	}
	image, err = agentInitrd(self, initramfs.BuildAgent, log, mods)
	return "", image, err
}

// ptnetModule is our guest driver for the ptnet and memdev devices (guest/kmod).
const ptnetModule = "ptvmm_ptnet"

// nicModules are the host paths of the modules the cached kernel needs for nics,
// in load order: the virtio-net group for virtio NICs, ptvmm_ptnet for ptnet.
func nicModules(kernelDir string, nics []vmm.NIC) ([]string, error) {
	var virtio, ptnet bool
	for _, n := range nics {
		switch n.Model {
		case vmm.NICPtnet:
			ptnet = true
		default:
			virtio = true
		}
	}
	if !virtio && !ptnet {
		return nil, nil
	}
	k, err := kcache.Load(kernelDir)
	if err != nil {
		return nil, err
	}
	var paths []string
	if virtio {
		names, err := k.Modules("virtio-net")
		if err != nil {
			return nil, err
		}
		for _, m := range names {
			paths = append(paths, k.ModulePath(m))
		}
	}
	if ptnet {
		p := k.ModulePath(ptnetModule)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("the guest driver for ptnet, %s.ko, is not built for %s: run `make kernel` (it needs the linux-headers-%s package)", ptnetModule, k.Version, k.Version)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// agentInitrd packs self as /init when it is a static executable: vmrun runs
// the agent when it is started as /init, so no toolchain is needed. Otherwise
// it packs the agent that build (initramfs.BuildAgent) compiles, which needs
// the go command and the ptvmm source tree.
func agentInitrd(self string, build func(out string) error, log *slog.Logger, mods []string) ([]byte, error) {
	initPath := ""
	if self != "" {
		static, err := staticExecutable(self)
		switch {
		case err != nil:
			log.Debug("cannot tell whether vmrun is statically linked", "err", err)
		case static:
			initPath = self
			log.Debug("guest initramfs: this static vmrun as /init", "path", self)
		default:
			log.Debug("vmrun is dynamically linked; building the guest agent with go", "path", self)
		}
	}
	if initPath == "" {
		tmp, err := os.MkdirTemp("", "vmrun-")
		if err != nil {
			return nil, fmt.Errorf("guest initramfs: %w", err)
		}
		defer os.RemoveAll(tmp)
		initPath = filepath.Join(tmp, "ptvmm-agent")
		if err := build(initPath); err != nil {
			log.Debug("building the guest agent failed", "err", err)
			return nil, errDynamic
		}
		log.Debug("guest initramfs: the guest agent built with go")
	}
	var buf bytes.Buffer
	if err := initramfs.Build(&buf, initramfs.Spec{Init: initPath, Modules: mods}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
