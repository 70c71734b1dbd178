package protocol

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseCmdline(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want Cmdline
	}{
		{"empty", "", nil},
		{"only space", " \t\n", nil},
		{"bare and valued", "quiet console=ttyS0\n", Cmdline{{Key: "quiet"}, {Key: "console", Value: "ttyS0", HasValue: true}}},
		{"quoted value with spaces", `a=1 ptvmm.cmd="/bin/e2e.test -test.v -test.run X" b=2`, Cmdline{
			{Key: "a", Value: "1", HasValue: true},
			{Key: "ptvmm.cmd", Value: "/bin/e2e.test -test.v -test.run X", HasValue: true},
			{Key: "b", Value: "2", HasValue: true},
		}},
		{"whole param quoted", `"ptvmm.cmd=echo a  b" x`, Cmdline{{Key: "ptvmm.cmd", Value: "echo a  b", HasValue: true}, {Key: "x"}}},
		{"empty value", `a= b=""`, Cmdline{{Key: "a", HasValue: true}, {Key: "b", HasValue: true}}},
		{"value with equals", `ptvmm.cmd="env A=b c" k=v=w`, Cmdline{{Key: "ptvmm.cmd", Value: "env A=b c", HasValue: true}, {Key: "k", Value: "v=w", HasValue: true}}},
		{"single quotes are ordinary", `ptvmm.cmd="sh -c 'echo hi'"`, Cmdline{{Key: "ptvmm.cmd", Value: "sh -c 'echo hi'", HasValue: true}}},
		{"quote inside value kept", `a=x"y z" b`, Cmdline{{Key: "a", Value: `x"y z"`, HasValue: true}, {Key: "b"}}},
		{"unterminated quote runs to end", `a="b c`, Cmdline{{Key: "a", Value: "b c", HasValue: true}}},
		{"tabs and newlines separate", "a=1\tb=2\nc", Cmdline{{Key: "a", Value: "1", HasValue: true}, {Key: "b", Value: "2", HasValue: true}, {Key: "c"}}},
		{"double dash is a word", "a -- b", Cmdline{{Key: "a"}, {Key: "--"}, {Key: "b"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			assert.Equal(t, c.want, ParseCmdline(c.in))
		})
	}
}

func TestCmdlineGet(t *testing.T) {
	cl := ParseCmdline(`ptvmm.modules=a,b quiet ptvmm.modules=c ptvmm.cmd="x y"`)
	v, ok := cl.Get("ptvmm.modules")
	assert.True(t, ok)
	assert.Equal(t, "c", v, "the last duplicate wins")
	assert.Equal(t, []string{"a,b", "c"}, cl.All("ptvmm.modules"))

	v, ok = cl.Get("quiet")
	assert.True(t, ok, "a bare word is present")
	assert.Equal(t, "", v)

	_, ok = cl.Get("ptvmm.shutdown")
	assert.False(t, ok, "missing key")
	assert.Nil(t, cl.All("missing"))
	_, ok = cl.Get("ptvmm")
	assert.False(t, ok, "prefix of a key is not the key")
}

func TestSplitCommand(t *testing.T) {
	cases := []struct {
		in   string
		want []string
		err  string
	}{
		{in: "/bin/e2e.test -test.v", want: []string{"/bin/e2e.test", "-test.v"}},
		{in: "  a   b\tc\n", want: []string{"a", "b", "c"}},
		{in: `sh -c 'echo hi; exit 3'`, want: []string{"sh", "-c", "echo hi; exit 3"}},
		{in: `echo "a \"b\" \$x \\ \n"`, want: []string{"echo", `a "b" $x \ \n`}},
		{in: `a\ b c\'d`, want: []string{"a b", "c'd"}},
		{in: `x''y "" ''`, want: []string{"xy", "", ""}},
		{in: "a\\\nb", want: []string{"ab"}},
		{in: `trailing\`, want: []string{"trailing"}},
		{in: `'unterminated`, err: "unterminated single quote"},
		{in: `"unterminated`, err: "unterminated double quote"},
		{in: "", err: "empty command"},
		{in: " \t ", err: "empty command"},
	}
	for _, c := range cases {
		got, err := SplitCommand(c.in)
		if c.err != "" {
			require.Error(t, err, c.in)
			assert.Contains(t, err.Error(), c.err)
			continue
		}
		require.NoError(t, err, c.in)
		assert.Equal(t, c.want, got, c.in)
	}
}

func TestCmdlineArg(t *testing.T) {
	s, err := CmdlineArg(KeyCmd, "/bin/e2e.test -test.v")
	require.NoError(t, err)
	assert.Equal(t, `ptvmm.cmd="/bin/e2e.test -test.v"`, s)

	s, err = CmdlineArg(KeyModules, "irqbypass,kvm,kvm-amd")
	require.NoError(t, err)
	assert.Equal(t, "ptvmm.modules=irqbypass,kvm,kvm-amd", s)

	s, err = CmdlineArg("k", "")
	require.NoError(t, err)
	assert.Equal(t, `k=""`, s)

	for _, bad := range [][2]string{{KeyCmd, `echo "x"`}, {KeyCmd, "a\nb"}, {"", "v"}, {"a b", "v"}, {"a=b", "v"}, {"a\rb", "v"}, {"k", "a\x00b"}} {
		_, err := CmdlineArg(bad[0], bad[1])
		assert.Error(t, err, "%q=%q", bad[0], bad[1])
	}
}

func TestExitStatus(t *testing.T) {
	for _, n := range []int{0, 1, 127, 137, 255} {
		got, ok := ParseExitStatus(ExitStatusLine(n) + "\r")
		assert.True(t, ok)
		assert.Equal(t, n, got)
	}
	got, ok := ParseExitStatus("partial line" + ExitStatusLine(3))
	assert.True(t, ok)
	assert.Equal(t, 3, got)
	for _, bad := range []string{"", ReadyLine, ExitStatusPrefix, ExitStatusPrefix + "x", ExitStatusPrefix + "-1", "exit status 3"} {
		_, ok := ParseExitStatus(bad)
		assert.False(t, ok, bad)
	}
}

// FuzzParseCmdline checks that parsing never panics, that keys never hold
// white space, and that what CmdlineArg formats parses back unchanged.
func FuzzParseCmdline(f *testing.F) {
	f.Add(`console=ttyS0 ptvmm.cmd="/bin/x -v" quiet`, "ptvmm.cmd", "a b 'c'")
	f.Add(`"a=b c" d="e`, "k", "")
	f.Add("\"\"\"=\"", "x.y", "v=w")
	f.Fuzz(func(t *testing.T, line, key, value string) {
		for _, p := range ParseCmdline(line) {
			if strings.ContainsAny(p.Key, " \t\n\r\f\v") && !strings.Contains(line, `"`) {
				t.Fatalf("key %q has white space outside quotes", p.Key)
			}
			if !p.HasValue && p.Value != "" {
				t.Fatalf("param %q without value has one", p.Key)
			}
		}
		arg, err := CmdlineArg(key, value)
		if err != nil {
			return
		}
		cl := ParseCmdline("console=ttyS0 " + arg + " quiet")
		got, ok := cl.Get(key)
		if !ok || got != value {
			t.Fatalf("%q: parsed back %q, %v; want %q", arg, got, ok, value)
		}
		if len(cl) != 3 {
			t.Fatalf("%q: split into %d params, want 3", arg, len(cl))
		}
	})
}

// FuzzSplitCommand checks that splitting never panics and that words
// quoted with single quotes come back unchanged.
func FuzzSplitCommand(f *testing.F) {
	f.Add(`sh -c 'echo hi' "a \"b\"" c\ d`, "word")
	f.Add("", "it's")
	f.Fuzz(func(t *testing.T, cmd, word string) {
		words, err := SplitCommand(cmd)
		if err == nil && len(words) == 0 {
			t.Fatal("no error and no words")
		}
		quoted := "'" + strings.ReplaceAll(word, "'", `'\''`) + "'"
		got, err := SplitCommand("prog " + quoted)
		if err != nil {
			t.Fatalf("split %q: %v", quoted, err)
		}
		if len(got) != 2 || got[1] != word {
			t.Fatalf("split %q = %q, want [prog %q]", quoted, got, word)
		}
	})
}
