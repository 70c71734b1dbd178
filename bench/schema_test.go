package bench

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReportJSONSchema: every record of a real run validates, and so do the notes
// and ratios.
func TestReportJSONSchema(t *testing.T) {
	rep := sharedReport(t)
	var b bytes.Buffer
	require.NoError(t, rep.WriteJSON(&b))
	require.NoError(t, ValidateReport(b.Bytes()))
	require.NotEmpty(t, rep.Records)
}

// TestSchemaRejects: the validator is not a yes-machine: each broken report fails.
func TestSchemaRejects(t *testing.T) {
	rep := sharedReport(t)
	var b bytes.Buffer
	require.NoError(t, rep.WriteJSON(&b))
	good := b.String()
	require.NoError(t, ValidateReport([]byte(good)))
	cases := map[string]string{
		"missing mpps":     strings.Replace(good, `"mpps":`, `"mpps_gone":`, 1),
		"string for int":   strings.Replace(good, `"size": 60`, `"size": "60"`, 1),
		"fraction for int": strings.Replace(good, `"size": 60`, `"size": 60.5`, 1),
		"unknown path":     strings.Replace(good, `"path": "ptnet-pipe"`, `"path": "ptnet-moon"`, 1),
		"negative drops":   strings.Replace(good, `"drops": 0`, `"drops": -1`, 1),
		"bad date":         strings.Replace(good, `"date": "`, `"date": "yesterday`, 1),
		"extra field":      strings.Replace(good, `"tier": "process",`, `"tier": "process", "bogus": 1,`, 1),
	}
	for name, doc := range cases {
		require.NotEqual(t, good, doc, "%s: the mutation must apply", name)
		assert.Error(t, ValidateReport([]byte(doc)), name)
	}
}
