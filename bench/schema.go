package bench

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ReportSchema is the JSON Schema of Report.WriteJSON's output.
//
//go:embed testdata/report.schema.json
var ReportSchema []byte

// ValidateReport checks a report's JSON (as WriteJSON writes it) against
// ReportSchema: for tests, and for tools that read vmrun bench's JSON.
func ValidateReport(doc []byte) error {
	var s schema
	if err := json.Unmarshal(ReportSchema, &s); err != nil {
		return fmt.Errorf("bench: report schema: %w", err)
	}
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return fmt.Errorf("bench: report JSON: %w", err)
	}
	return validate(&s, &s, v, "report")
}

// schema is the subset of JSON Schema that testdata/report.schema.json uses: type,
// required, properties, additionalProperties (false), items, enum, minimum,
// maximum, minLength, format date-time and local $ref.
type schema struct {
	Ref        string             `json:"$ref"`
	Type       string             `json:"type"`
	Required   []string           `json:"required"`
	Properties map[string]*schema `json:"properties"`
	AddProps   *bool              `json:"additionalProperties"`
	Items      *schema            `json:"items"`
	Enum       []string           `json:"enum"`
	Minimum    *float64           `json:"minimum"`
	Maximum    *float64           `json:"maximum"`
	MinLength  *int               `json:"minLength"`
	Format     string             `json:"format"`
	Defs       map[string]*schema `json:"$defs"`
}

// validate checks doc (decoded with UseNumber) against s; root holds the $defs.
func validate(root, s *schema, doc any, at string) error {
	if s.Ref != "" {
		name, ok := strings.CutPrefix(s.Ref, "#/$defs/")
		if !ok || root.Defs[name] == nil {
			return fmt.Errorf("%s: unknown $ref %q", at, s.Ref)
		}
		s = root.Defs[name]
	}
	switch s.Type {
	case "object":
		m, ok := doc.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, got %T", at, doc)
		}
		for _, k := range s.Required {
			if _, ok := m[k]; !ok {
				return fmt.Errorf("%s: %q is missing", at, k)
			}
		}
		for k, v := range m {
			ps, ok := s.Properties[k]
			if !ok {
				if s.AddProps != nil && !*s.AddProps {
					return fmt.Errorf("%s: unexpected field %q", at, k)
				}
				continue
			}
			if err := validate(root, ps, v, at+"."+k); err != nil {
				return err
			}
		}
	case "array":
		a, ok := doc.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, got %T", at, doc)
		}
		if s.Items == nil {
			break
		}
		for i, v := range a {
			if err := validate(root, s.Items, v, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case "string":
		str, ok := doc.(string)
		if !ok {
			return fmt.Errorf("%s: want a string, got %T", at, doc)
		}
		if s.MinLength != nil && len(str) < *s.MinLength {
			return fmt.Errorf("%s: %q is shorter than %d", at, str, *s.MinLength)
		}
		if len(s.Enum) > 0 && !slices.Contains(s.Enum, str) {
			return fmt.Errorf("%s: %q is not one of %v", at, str, s.Enum)
		}
		if s.Format == "date-time" {
			if _, err := time.Parse(time.RFC3339, str); err != nil {
				return fmt.Errorf("%s: %q is not a date-time", at, str)
			}
		}
	case "integer", "number":
		n, ok := doc.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want a %s, got %T", at, s.Type, doc)
		}
		f, err := n.Float64()
		if err != nil {
			return fmt.Errorf("%s: %v", at, err)
		}
		if s.Type == "integer" {
			if _, err := n.Int64(); err != nil {
				return fmt.Errorf("%s: %s is not an integer", at, n)
			}
		}
		if s.Minimum != nil && f < *s.Minimum {
			return fmt.Errorf("%s: %v is below %v", at, f, *s.Minimum)
		}
		if s.Maximum != nil && f > *s.Maximum {
			return fmt.Errorf("%s: %v is above %v", at, f, *s.Maximum)
		}
	case "boolean":
		if _, ok := doc.(bool); !ok {
			return fmt.Errorf("%s: want a boolean, got %T", at, doc)
		}
	default:
		return fmt.Errorf("%s: schema type %q not supported", at, s.Type)
	}
	return nil
}
