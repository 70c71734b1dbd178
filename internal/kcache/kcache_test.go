package kcache

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func fakeCache(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(d, "VERSION"), []byte("6.1.0-test\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(d, "vmlinuz"), []byte{0}, 0o644))
	return d
}

func TestDirOrder(t *testing.T) {
	env, built := fakeCache(t), fakeCache(t)
	t.Setenv(EnvDir, env)
	BuiltDir = built
	defer func() { BuiltDir = "" }()
	d, err := Dir()
	require.NoError(t, err)
	assert.Equal(t, env, d, "the variable wins")

	t.Setenv(EnvDir, "")
	d, err = Dir()
	require.NoError(t, err)
	assert.Equal(t, built, d, "then the compiled-in directory")

	// Not the working directory: a module with a .cache/kernel there is ignored.
	BuiltDir = filepath.Join(t.TempDir(), "gone")
	wd := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(wd, "go.mod"), []byte("module x\n"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(wd, ".cache", "kernel"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(wd, ".cache", "kernel", "VERSION"), []byte("x"), 0o644))
	t.Chdir(wd)
	_, err = Dir()
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrNotFound))
	assert.Contains(t, err.Error(), "make kernel")
	assert.Contains(t, err.Error(), EnvDir)
}

func TestLoadAndModules(t *testing.T) {
	d := fakeCache(t)
	require.NoError(t, os.WriteFile(filepath.Join(d, "net.order"), []byte("a b\na\n"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(d, "modules"), 0o755))
	for _, m := range []string{"a", "b"} {
		require.NoError(t, os.WriteFile(filepath.Join(d, "modules", m+".ko"), []byte{0}, 0o644))
	}
	k, err := Load(d)
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-test", k.Version)
	mods, err := k.Modules("net")
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, mods, "in order, each once")
	_, err = k.Modules("nosuch")
	assert.ErrorContains(t, err, "make kernel")
	_, err = Load(t.TempDir())
	assert.ErrorContains(t, err, "make kernel")
}
