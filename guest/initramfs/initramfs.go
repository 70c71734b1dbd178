package initramfs

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ptvmm/ptvmm/guest/agent/protocol"
	"github.com/u-root/u-root/pkg/cpio"
)

// File is one extra entry in the initramfs.
type File struct {
	// Guest is the absolute path inside the guest.
	Guest string
	// Host is the host file to copy. Leave empty to use Data or Symlink.
	Host string
	// Data is the content when Host is empty.
	Data []byte
	// Symlink, when set, makes Guest a symbolic link to it (Host and Data unused).
	Symlink string
	// Mode holds the permission bits. Zero means the host file's bits, or
	// 0644 for Data.
	Mode os.FileMode
}

// Spec says what goes into an initramfs.
type Spec struct {
	// Init is the host path of the agent binary (see BuildAgent), or of a
	// static binary that carries the agent (see agent.Invoked), such as a
	// static vmrun. It becomes /init, and /bin/ptvmm-agent links to it. Required.
	Init string
	// Modules are host paths of kernel modules (.ko, or .ko.xz/.ko.gz/.ko.zst
	// if the kernel decompresses modules) in load order. Each goes to
	// /lib/modules/ptvmm/<base name>, and the base names are listed in
	// /etc/ptvmm/modules in this order.
	Modules []string
	// Files are extra files, links and inline data.
	Files []File
	// Dirs are extra directories to create (mode 0755).
	Dirs []string
	// Cmd, if not empty, is written to /etc/ptvmm/cmd: the command the agent
	// runs when the kernel command line has no ptvmm.cmd.
	Cmd string
	// Env are KEY=VALUE entries added to the command's environment
	// (/etc/ptvmm/env).
	Env []string
	// Gzip compresses the archive; Linux accepts both.
	Gzip bool
}

// baseDirs exist in every image: mount points and the agent's directories.
var baseDirs = []string{
	"/bin", "/dev", "/dev/pts", "/etc", "/etc/ptvmm", "/lib", "/lib/modules",
	protocol.ModuleDir, "/proc", "/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/usr/bin",
}

// entry is a record to write, with its content opened only when written.
type entry struct {
	info cpio.Info
	host string // copy this host file
	data []byte // or this content
}

// Build writes the initramfs described by spec to w. It checks every host
// file before writing anything, so a missing file leaves w untouched.
func Build(w io.Writer, spec Spec) error {
	entries, err := plan(spec)
	if err != nil {
		return err
	}
	var (
		bw            = bufio.NewWriterSize(w, 1<<20)
		out io.Writer = bw
		gz  *gzip.Writer
	)
	if spec.Gzip {
		gz, err = gzip.NewWriterLevel(bw, gzip.BestSpeed)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		out = gz
	}
	rw := cpio.Newc.Writer(out)
	for _, e := range entries {
		if err := writeEntry(rw, e); err != nil {
			return fmt.Errorf("initramfs: write %s: %w", e.info.Name, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return fmt.Errorf("initramfs: write trailer: %w", err)
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return fmt.Errorf("initramfs: gzip: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}

// BuildFile writes the initramfs to the file at path, replacing it.
func BuildFile(outPath string, spec Spec) (err error) {
	f, err := os.Create(outPath)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("initramfs: %w", cerr)
		}
		if err != nil {
			os.Remove(outPath)
		}
	}()
	return Build(f, spec)
}

func writeEntry(rw cpio.RecordWriter, e entry) error {
	switch {
	case e.host != "":
		f, err := os.Open(e.host)
		if err != nil {
			return err
		}
		defer f.Close() // the cpio writer also closes it; a second close is harmless
		st, err := f.Stat()
		if err != nil {
			return err
		}
		e.info.FileSize = uint64(st.Size())
		return rw.WriteRecord(cpio.Record{ReaderAt: f, Info: e.info})
	case e.data != nil:
		return rw.WriteRecord(cpio.StaticRecord(e.data, e.info))
	default:
		return rw.WriteRecord(cpio.Record{Info: e.info})
	}
}

// plan validates spec and lists the records in write order: directories
// (parents first), then everything else in the order given.
func plan(spec Spec) ([]entry, error) {
	if spec.Init == "" {
		return nil, errors.New("initramfs: Spec.Init (the agent binary) is empty; build one with initramfs.BuildAgent")
	}
	var (
		files []entry
		dirs  = map[string]bool{}
		seen  = map[string]string{} // guest path -> what put it there
	)
	add := func(e entry, what string) error {
		if prev, ok := seen[e.info.Name]; ok {
			return fmt.Errorf("initramfs: %s and %s both go to /%s", prev, what, e.info.Name)
		}
		seen[e.info.Name] = what
		files = append(files, e)
		return nil
	}
	addHost := func(host, guest string, mode os.FileMode, what string) error {
		st, err := os.Stat(host)
		if err != nil {
			return fmt.Errorf("initramfs: %s: %w", what, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("initramfs: %s: %s is not a regular file", what, host)
		}
		if mode == 0 {
			mode = st.Mode().Perm()
		}
		name, err := guestName(guest)
		if err != nil {
			return fmt.Errorf("initramfs: %s: %w", what, err)
		}
		return add(entry{info: fileInfo(name, mode), host: host}, what)
	}
	addData := func(guest string, data []byte, mode os.FileMode, what string) error {
		name, err := guestName(guest)
		if err != nil {
			return fmt.Errorf("initramfs: %s: %w", what, err)
		}
		if data == nil {
			data = []byte{}
		}
		return add(entry{info: fileInfo(name, mode), data: data}, what)
	}

	if err := addHost(spec.Init, protocol.InitPath, 0o755, "agent "+spec.Init); err != nil {
		return nil, err
	}
	if err := add(entry{
		info: cpio.Info{Name: strings.TrimPrefix(protocol.AgentPath, "/"), Mode: cpio.S_IFLNK | 0o777, FileSize: uint64(len(protocol.InitPath))},
		data: []byte(protocol.InitPath),
	}, "agent link"); err != nil {
		return nil, err
	}
	if err := add(entry{info: cpio.Info{Name: "dev/console", Mode: cpio.S_IFCHR | 0o600, Rmajor: 5, Rminor: 1}}, "console node"); err != nil {
		return nil, err
	}

	var modList strings.Builder
	for _, m := range spec.Modules {
		base := filepath.Base(m)
		if !isModuleName(base) {
			return nil, fmt.Errorf("initramfs: module %s: name must end in .ko, .ko.xz, .ko.gz or .ko.zst", m)
		}
		if err := addHost(m, path.Join(protocol.ModuleDir, base), 0o644, "module "+m); err != nil {
			return nil, err
		}
		modList.WriteString(base + "\n")
	}
	if len(spec.Modules) > 0 {
		if err := addData(protocol.ModulesFile, []byte(modList.String()), 0o644, "module list"); err != nil {
			return nil, err
		}
	}
	if spec.Cmd != "" {
		cmd := spec.Cmd
		if !strings.HasSuffix(cmd, "\n") {
			cmd += "\n"
		}
		if err := addData(protocol.CmdFile, []byte(cmd), 0o755, "command"); err != nil {
			return nil, err
		}
	}
	if len(spec.Env) > 0 {
		var env strings.Builder
		for _, kv := range spec.Env {
			k, _, ok := strings.Cut(kv, "=")
			if !ok || k == "" || strings.ContainsAny(kv, "\n\x00") {
				return nil, fmt.Errorf("initramfs: environment entry %q: want KEY=VALUE on one line", kv)
			}
			env.WriteString(kv + "\n")
		}
		if err := addData(protocol.EnvFile, []byte(env.String()), 0o644, "environment"); err != nil {
			return nil, err
		}
	}
	for _, f := range spec.Files {
		what := "file " + f.Guest
		switch {
		case f.Symlink != "":
			name, err := guestName(f.Guest)
			if err != nil {
				return nil, fmt.Errorf("initramfs: %s: %w", what, err)
			}
			if err := add(entry{
				info: cpio.Info{Name: name, Mode: cpio.S_IFLNK | 0o777, FileSize: uint64(len(f.Symlink))},
				data: []byte(f.Symlink),
			}, what); err != nil {
				return nil, err
			}
		case f.Host != "":
			if err := addHost(f.Host, f.Guest, f.Mode, what); err != nil {
				return nil, err
			}
		default:
			mode := f.Mode
			if mode == 0 {
				mode = 0o644
			}
			if err := addData(f.Guest, f.Data, mode, what); err != nil {
				return nil, err
			}
		}
	}

	for _, d := range baseDirs {
		dirs[strings.TrimPrefix(d, "/")] = true
	}
	for _, d := range spec.Dirs {
		name, err := guestName(d)
		if err != nil {
			return nil, fmt.Errorf("initramfs: directory %s: %w", d, err)
		}
		if what, ok := seen[name]; ok {
			return nil, fmt.Errorf("initramfs: directory %s is also %s", d, what)
		}
		dirs[name] = true
	}
	// Every parent of every entry must exist: the kernel does not create them.
	for name := range seen {
		for p := path.Dir(name); p != "."; p = path.Dir(p) {
			dirs[p] = true
		}
	}
	for d := range dirs {
		for p := path.Dir(d); p != "."; p = path.Dir(p) {
			dirs[p] = true
		}
		if what, ok := seen[d]; ok {
			return nil, fmt.Errorf("initramfs: /%s is %s and also a directory", d, what)
		}
	}
	dirNames := make([]string, 0, len(dirs))
	for d := range dirs {
		dirNames = append(dirNames, d)
	}
	// Sorting puts a parent before its children.
	slices.Sort(dirNames)
	out := make([]entry, 0, len(dirNames)+len(files))
	for _, d := range dirNames {
		mode := uint64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		out = append(out, entry{info: cpio.Info{Name: d, Mode: cpio.S_IFDIR | mode, NLink: 2}})
	}
	return append(out, files...), nil
}

func fileInfo(name string, mode os.FileMode) cpio.Info {
	return cpio.Info{Name: name, Mode: cpio.S_IFREG | uint64(mode.Perm()), NLink: 1}
}

// guestName turns an absolute guest path into a cpio name (no leading slash).
func guestName(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("guest path %q must be absolute", p)
	}
	c := path.Clean(p)
	if c == "/" {
		return "", fmt.Errorf("guest path %q names the root", p)
	}
	return strings.TrimPrefix(c, "/"), nil
}

func isModuleName(base string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.gz", ".ko.zst"} {
		if strings.HasSuffix(base, ext) && len(base) > len(ext) {
			return true
		}
	}
	return false
}
