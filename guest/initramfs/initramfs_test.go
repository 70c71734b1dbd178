package initramfs

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/u-root/u-root/pkg/cpio"
)

// writeFile creates a host file for a test and returns its path.
func writeFile(t *testing.T, dir, name string, data string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(data), mode))
	require.NoError(t, os.Chmod(p, mode)) // umask must not change the mode under test
	return p
}

type record struct {
	info cpio.Info
	data []byte
}

// readArchive reads every record of a newc archive, in order.
func readArchive(t *testing.T, image []byte) ([]string, map[string]record) {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(image)))
	require.NoError(t, err)
	var names []string
	byName := map[string]record{}
	for _, r := range recs {
		data, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		require.NoError(t, err)
		require.NotContains(t, byName, r.Name, "duplicate record")
		names = append(names, r.Name)
		byName[r.Name] = record{info: r.Info, data: data}
	}
	return names, byName
}

func testSpec(t *testing.T) Spec {
	dir := t.TempDir()
	return Spec{
		Init:    writeFile(t, dir, "agent", "\x7fELF agent", 0o700),
		Modules: []string{writeFile(t, dir, "kvm.ko", "kvm module", 0o600), writeFile(t, dir, "irqbypass.ko", "irqbypass", 0o600), writeFile(t, dir, "kvm-amd.ko.xz", "kvm-amd xz", 0o600)},
		Files: []File{
			{Host: writeFile(t, dir, "vmlinuz", "kernel image", 0o640), Guest: "/ptvmm/guest/vmlinuz"},
			{Host: writeFile(t, dir, "e2e.test", "test binary", 0o700), Guest: "/bin/e2e.test", Mode: 0o755},
			{Data: []byte("inline"), Guest: "/etc/hello"},
			{Symlink: "/bin/ptvmm-agent", Guest: "/bin/echo"},
		},
		Dirs: []string{"/var/lib/x"},
		Cmd:  "/bin/e2e.test -test.v",
		Env:  []string{"PTVMM_KERNEL_DIR=/ptvmm/guest", "A=b=c"},
	}
}

func TestBuildRoundTrip(t *testing.T) {
	spec := testSpec(t)
	var buf bytes.Buffer
	require.NoError(t, Build(&buf, spec))
	names, recs := readArchive(t, buf.Bytes())

	// Every record's parent directory comes before it.
	pos := map[string]int{}
	for i, n := range names {
		pos[n] = i
	}
	for _, n := range names {
		if n == cpio.Trailer {
			continue
		}
		if d := filepath.Dir(n); d != "." {
			pd, ok := pos[d]
			require.True(t, ok, "parent %s of %s missing", d, n)
			assert.Less(t, pd, pos[n], "parent %s written after %s", d, n)
			assert.Equal(t, uint64(cpio.S_IFDIR), recs[d].info.Mode&cpio.S_IFMT, "%s is not a directory", d)
		}
	}
	assert.True(t, bytes.Contains(buf.Bytes(), []byte(cpio.Trailer+"\x00")), "archive has no trailer")

	for _, d := range []string{"dev", "proc", "sys", "tmp", "run", "etc/ptvmm", "bin", "lib/modules/ptvmm", "var/lib/x"} {
		r, ok := recs[d]
		require.True(t, ok, "directory %s missing", d)
		assert.Equal(t, uint64(cpio.S_IFDIR), r.info.Mode&cpio.S_IFMT, d)
	}
	assert.Equal(t, uint64(0o1777), recs["tmp"].info.Mode&0o7777)

	con := recs["dev/console"]
	assert.Equal(t, uint64(cpio.S_IFCHR|0o600), con.info.Mode)
	assert.Equal(t, uint64(5), con.info.Rmajor)
	assert.Equal(t, uint64(1), con.info.Rminor)

	file := func(name string, mode uint64, data string) {
		t.Helper()
		r, ok := recs[name]
		require.True(t, ok, "%s missing", name)
		assert.Equal(t, cpio.S_IFREG|mode, r.info.Mode, "%s mode %o", name, r.info.Mode)
		assert.Equal(t, data, string(r.data), name)
	}
	file("init", 0o755, "\x7fELF agent")
	file("lib/modules/ptvmm/kvm.ko", 0o644, "kvm module")
	file("lib/modules/ptvmm/irqbypass.ko", 0o644, "irqbypass")
	file("lib/modules/ptvmm/kvm-amd.ko.xz", 0o644, "kvm-amd xz")
	file("etc/ptvmm/modules", 0o644, "kvm.ko\nirqbypass.ko\nkvm-amd.ko.xz\n")
	file("etc/ptvmm/cmd", 0o755, "/bin/e2e.test -test.v\n")
	file("etc/ptvmm/env", 0o644, "PTVMM_KERNEL_DIR=/ptvmm/guest\nA=b=c\n")
	file("ptvmm/guest/vmlinuz", 0o640, "kernel image")
	file("bin/e2e.test", 0o755, "test binary")
	file("etc/hello", 0o644, "inline")

	link := func(name, target string) {
		t.Helper()
		r, ok := recs[name]
		require.True(t, ok, "%s missing", name)
		assert.Equal(t, uint64(cpio.S_IFLNK), r.info.Mode&cpio.S_IFMT, name)
		assert.Equal(t, target, string(r.data), name)
	}
	link("bin/ptvmm-agent", "/init")
	link("bin/echo", "/bin/ptvmm-agent")
}

func TestBuildGzip(t *testing.T) {
	spec := testSpec(t)
	var plain, packed bytes.Buffer
	require.NoError(t, Build(&plain, spec))
	spec.Gzip = true
	require.NoError(t, Build(&packed, spec))
	zr, err := gzip.NewReader(&packed)
	require.NoError(t, err)
	got, err := io.ReadAll(zr)
	require.NoError(t, err)
	assert.Equal(t, plain.Bytes(), got, "gzip image must hold the same archive")
}

func TestBuildReproducible(t *testing.T) {
	spec := testSpec(t)
	var a, b bytes.Buffer
	require.NoError(t, Build(&a, spec))
	require.NoError(t, Build(&b, spec))
	assert.Equal(t, a.Bytes(), b.Bytes())
}

func TestBuildMinimal(t *testing.T) {
	dir := t.TempDir()
	var buf bytes.Buffer
	require.NoError(t, Build(&buf, Spec{Init: writeFile(t, dir, "agent", "x", 0o755)}))
	_, recs := readArchive(t, buf.Bytes())
	assert.NotContains(t, recs, "etc/ptvmm/modules", "no modules: no list")
	assert.NotContains(t, recs, "etc/ptvmm/cmd")
	assert.NotContains(t, recs, "etc/ptvmm/env")
	assert.Contains(t, recs, "init")
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	agent := writeFile(t, dir, "agent", "x", 0o755)
	mod := writeFile(t, dir, "kvm.ko", "m", 0o644)
	missing := filepath.Join(dir, "missing")
	cases := []struct {
		name string
		spec Spec
		want string
		is   error
	}{
		{"no init", Spec{}, "Spec.Init", nil},
		{"missing init", Spec{Init: missing}, "missing", fs.ErrNotExist},
		{"init is a directory", Spec{Init: dir}, "not a regular file", nil},
		{"missing module", Spec{Init: agent, Modules: []string{filepath.Join(dir, "nope.ko")}}, "nope.ko", fs.ErrNotExist},
		{"module not .ko", Spec{Init: agent, Modules: []string{agent}}, ".ko", nil},
		{"missing file", Spec{Init: agent, Files: []File{{Host: missing, Guest: "/x"}}}, "missing", fs.ErrNotExist},
		{"relative guest path", Spec{Init: agent, Files: []File{{Data: []byte("a"), Guest: "x"}}}, "absolute", nil},
		{"guest root", Spec{Init: agent, Files: []File{{Data: []byte("a"), Guest: "/"}}}, "root", nil},
		{"over /init", Spec{Init: agent, Files: []File{{Data: []byte("a"), Guest: "/init"}}}, "both go to /init", nil},
		{"same module twice", Spec{Init: agent, Modules: []string{mod, mod}}, "both go to", nil},
		{"file over directory", Spec{Init: agent, Files: []File{{Data: []byte("a"), Guest: "/dev"}}}, "also a directory", nil},
		{"file under file", Spec{Init: agent, Files: []File{{Data: []byte("a"), Guest: "/init/x"}}}, "also a directory", nil},
		{"bad env", Spec{Init: agent, Env: []string{"NOEQUALS"}}, "KEY=VALUE", nil},
		{"env with newline", Spec{Init: agent, Env: []string{"A=b\nC=d"}}, "KEY=VALUE", nil},
		{"dir over file", Spec{Init: agent, Dirs: []string{"/init"}}, "also", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := Build(&buf, c.spec)
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
			assert.True(t, strings.HasPrefix(err.Error(), "initramfs: "), err.Error())
			if c.is != nil {
				assert.True(t, errors.Is(err, c.is), "%v is not %v", err, c.is)
			}
			assert.Zero(t, buf.Len(), "nothing may be written on error")
		})
	}
}

func TestBuildFile(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "initrd.cpio")
	require.NoError(t, BuildFile(out, Spec{Init: writeFile(t, dir, "agent", "x", 0o755)}))
	data, err := os.ReadFile(out)
	require.NoError(t, err)
	_, recs := readArchive(t, data)
	assert.Contains(t, recs, "init")

	err = BuildFile(out, Spec{Init: filepath.Join(dir, "missing")})
	require.Error(t, err)
	_, statErr := os.Stat(out)
	assert.True(t, errors.Is(statErr, fs.ErrNotExist), "a failed build leaves no file")
}

func BenchmarkBuild(b *testing.B) {
	dir := b.TempDir()
	big := make([]byte, 8<<20)
	p := filepath.Join(dir, "big")
	require.NoError(b, os.WriteFile(p, big, 0o644))
	spec := Spec{Init: p, Files: []File{{Host: p, Guest: "/big"}}}
	b.SetBytes(2 * int64(len(big)))
	for b.Loop() {
		require.NoError(b, Build(io.Discard, spec))
	}
}
