package protocol

import "strings"

// Param is one kernel command line parameter. Value is empty and HasValue
// false for a bare word such as "quiet".
type Param struct {
	Key      string
	Value    string
	HasValue bool
}

// Cmdline is a parsed kernel command line, in order.
type Cmdline []Param

// ParseCmdline splits a kernel command line (the text of /proc/cmdline) the
// way the kernel does: parameters are separated by white space outside double
// quotes; a value that starts with a double quote loses it and its closing
// quote at the end; a parameter quoted as a whole ("key=a b") loses both
// quotes. Other quotes are kept as they are. There are no escapes.
func ParseCmdline(s string) Cmdline {
	var out Cmdline
	for {
		s = strings.TrimLeft(s, " \t\n\r\f\v")
		if s == "" {
			return out
		}
		// Find the end of this parameter: white space outside quotes.
		quoted := s[0] == '"'
		start := 0
		if quoted {
			start = 1
		}
		inQuote := quoted
		end := start
		for end < len(s) {
			c := s[end]
			if !inQuote && isSpace(c) {
				break
			}
			if c == '"' {
				inQuote = !inQuote
			}
			end++
		}
		out = append(out, splitParam(s[start:end], quoted))
		s = s[end:]
	}
}

func splitParam(arg string, quoted bool) Param {
	// A parameter quoted as a whole ends with the closing quote.
	if quoted && strings.HasSuffix(arg, "\"") {
		arg = arg[:len(arg)-1]
	}
	key, val, ok := strings.Cut(arg, "=")
	if !ok {
		return Param{Key: arg}
	}
	if strings.HasPrefix(val, "\"") {
		val = val[1:]
		val = strings.TrimSuffix(val, "\"")
	}
	return Param{Key: key, Value: val, HasValue: true}
}

func isSpace(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', '\f', '\v':
		return true
	}
	return false
}

// Get returns the value of the last parameter named key, as the kernel lets a
// later parameter override an earlier one. ok is false if key is absent.
func (c Cmdline) Get(key string) (value string, ok bool) {
	for i := len(c) - 1; i >= 0; i-- {
		if c[i].Key == key {
			return c[i].Value, true
		}
	}
	return "", false
}

// All returns the values of every parameter named key, in order.
func (c Cmdline) All(key string) []string {
	var out []string
	for _, p := range c {
		if p.Key == key {
			out = append(out, p.Value)
		}
	}
	return out
}
