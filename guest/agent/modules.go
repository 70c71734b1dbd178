package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/ptvmm/ptvmm/guest/agent/protocol"
)

// moduleRef is a module to load: a name as written in the module list and
// the parameters to pass.
type moduleRef struct {
	Name   string
	Params string
}

// moduleExts are the file name endings of loadable modules, plain first.
var moduleExts = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}

// moduleList merges the module list file (one module per line, optional
// parameters after the name, # comments) and the comma separated
// ptvmm.modules value, file first. A module named twice is loaded once, at
// its first position.
func moduleList(file, cmdline string) []moduleRef {
	var (
		out  []moduleRef
		seen = map[string]bool{}
	)
	add := func(name, params string) {
		key := canonicalModule(name)
		if key == "" || seen[key] {
			return
		}
		seen[key] = true
		out = append(out, moduleRef{Name: name, Params: params})
	}
	for line := range strings.Lines(file) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		add(f[0], strings.Join(f[1:], " "))
	}
	for name := range strings.SplitSeq(cmdline, ",") {
		add(strings.TrimSpace(name), "")
	}
	return out
}

// canonicalModule is the kernel's view of a module name: no directory, no
// extension, '-' and '_' the same.
func canonicalModule(name string) string {
	name = path.Base(name)
	if name == "." || name == "/" {
		return ""
	}
	for _, ext := range moduleExts {
		if strings.HasSuffix(name, ext) {
			name = strings.TrimSuffix(name, ext)
			break
		}
	}
	return strings.ReplaceAll(name, "-", "_")
}

// errPresent is resolveModule's error for a module that has no file but that
// the kernel already has (/sys/module/<name>): built in, as Debian 13 builds
// the virtio core, or loaded. There is nothing to load and nothing to report.
var errPresent = errors.New("already in the kernel")

// resolveModule finds the file for a module name in fsys, whose root is the
// guest's /. A name with a slash is a path (relative to dir unless absolute);
// a bare name is looked up in dir as given, then with each module extension,
// then with '-' and '_' swapped. Without a file, a module the kernel has
// gives an error wrapping errPresent.
func resolveModule(fsys fs.FS, dir, name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("empty module name")
	}
	var cands []string
	if strings.Contains(name, "/") {
		p := name
		if !path.IsAbs(p) {
			p = path.Join(dir, p)
		}
		cands = append(cands, path.Clean(p))
	} else {
		bases := []string{name}
		if alt := swapDashes(name); alt != name {
			bases = append(bases, alt)
		}
		for _, b := range bases {
			cands = append(cands, path.Join(dir, b))
			if !hasModuleExt(b) {
				for _, ext := range moduleExts {
					cands = append(cands, path.Join(dir, b+ext))
				}
			}
		}
	}
	for _, c := range cands {
		rel := strings.TrimPrefix(c, "/")
		if rel == "" || !fs.ValidPath(rel) {
			continue
		}
		if st, err := fs.Stat(fsys, rel); err == nil && st.Mode().IsRegular() {
			return c, nil
		}
	}
	if c := canonicalModule(name); c != "" && fs.ValidPath("sys/module/"+c) {
		if st, err := fs.Stat(fsys, "sys/module/"+c); err == nil && st.IsDir() {
			return "", fmt.Errorf("module %s: %w", name, errPresent)
		}
	}
	return "", fmt.Errorf("module %s: no file for it in %s (looked for %s)", name, dir, strings.Join(cands, ", "))
}

func hasModuleExt(name string) bool {
	for _, ext := range moduleExts {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// swapDashes turns '-' into '_' or, if there is none, '_' into '-', since
// file names and module names disagree (kvm-amd.ko holds kvm_amd).
func swapDashes(name string) string {
	if strings.Contains(name, "-") {
		return strings.ReplaceAll(name, "-", "_")
	}
	return strings.ReplaceAll(name, "_", "-")
}

// isCompressedModule says whether the kernel must decompress the file
// (finit_module's MODULE_INIT_COMPRESSED_FILE).
func isCompressedModule(p string) bool {
	return strings.HasSuffix(p, ".xz") || strings.HasSuffix(p, ".zst") || strings.HasSuffix(p, ".gz")
}

// cmdlineModuleParams collects module parameters given on the kernel command
// line as <module>.<param>=<value> for the module canonical, as modprobe
// does: the kernel applies those only to built-in code.
func cmdlineModuleParams(cl protocol.Cmdline, canonical string) string {
	var out []string
	for _, p := range cl {
		mod, param, ok := strings.Cut(p.Key, ".")
		if !ok || param == "" || canonicalModule(mod) != canonical {
			continue
		}
		switch {
		case !p.HasValue:
			out = append(out, param)
		case strings.ContainsAny(p.Value, " \t"):
			out = append(out, param+`="`+p.Value+`"`)
		default:
			out = append(out, param+"="+p.Value)
		}
	}
	return strings.Join(out, " ")
}

// joinParams joins module parameter strings, skipping empty ones.
func joinParams(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + " " + b
}
