package agent

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestPktgenBuiltin(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "ptnet0")
	for _, tc := range []struct {
		args   []string
		status int
		errout string
	}{
		{[]string{"pktgen", "-mode", "flood"}, 2, `mode "flood"`},
		{[]string{"pktgen", "-dst", "x"}, 2, "-dst"},
		{[]string{"pktgen", "-nope"}, 2, "flag provided but not defined"},
		{[]string{"pktgen", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"pktgen", "-dev", missing, "-count", "1"}, 1, "ptnet: open " + missing},
	} {
		status, _, errout := run(t, "", append([]string{"ptvmm-agent"}, tc.args...)...)
		assert.Equal(t, tc.status, status, tc.args)
		assert.Contains(t, errout, tc.errout, tc.args)
	}
	_, out, _ := run(t, "", "ptvmm-agent", "help")
	assert.Contains(t, out, "pktgen [-dev /dev/ptnetN]")
}
