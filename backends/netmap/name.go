package netmap

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxNameLen is the longest port name (nmreq_header.nr_name is 64 bytes with the NUL).
const MaxNameLen = 63

// Kind is what a port name designates.
type Kind int

// Name kinds.
const (
	KindPlain      Kind = iota // a plain name ("netmap:eth0" or a bare name)
	KindVALE                   // "valeX:Y"
	KindPipeMaster             // "name{N"
	KindPipeSlave              // "name}N"
)

// Conf is the @conf: option: ring and slot counts, 0 where not given.
type Conf struct {
	TxRings, RxRings, HostRings int
	TxSlots, RxSlots            int
	HostRingsSet                bool // host-rings= was given (it may be 0)
}

// Name is a parsed netmap port name: "subsystem:port[{N|}N][@option...]".
type Name struct {
	Full string
	Kind Kind
	// Switch is "valeX" for VALE names (Switch "vale" when X is empty); Port is Y.
	Switch, Port string
	// Base is the name before a pipe suffix and PipeID the text after it.
	Base, PipeID string
	// Pipe is set when the name ends in a pipe suffix; for a VALE name this names a
	// pipe on that port.
	Pipe bool
	// Options.
	Conf  Conf
	MemID int    // @N, 0 = not given
	Share string // @share=port
}

func validIdent(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// ParseName parses a netmap port name. Supported: "valeX:Y", "netmap:name", bare
// names, a pipe suffix "{N" (master) or "}N" (slave), and options "@conf:rings=,
// tx-rings=,rx-rings=,host-rings=,slots=,tx-slots=,rx-slots=", "@share=port", "@N"
// (mem id). Errors are one line and say what is wrong.
func ParseName(s string) (Name, error) {
	n := Name{Full: s}
	bad := func(format string, a ...any) (Name, error) {
		return Name{}, fmt.Errorf("netmap: port name %q: "+format, append([]any{s}, a...)...)
	}
	if s == "" {
		return bad("empty")
	}
	if len(s) > MaxNameLen {
		return bad("longer than %d bytes", MaxNameLen)
	}
	main, opts, _ := strings.Cut(s, "@")
	if i := strings.IndexAny(main, "{}"); i >= 0 {
		n.Pipe = true
		n.Kind = KindPipeMaster
		if main[i] == '}' {
			n.Kind = KindPipeSlave
		}
		n.PipeID = main[i+1:]
		main = main[:i]
		if !validIdent(n.PipeID) {
			return bad("pipe suffix needs an id of letters, digits, '_', '-' or '.' after '%c'", s[i])
		}
	}
	n.Base = main
	if pre, port, ok := strings.Cut(main, ":"); ok {
		switch {
		case strings.HasPrefix(pre, "vale"):
			if x := pre[len("vale"):]; x != "" && !validIdent(x) {
				return bad("switch name %q has characters other than letters, digits, '_', '-', '.'", pre)
			}
			if !validIdent(port) {
				return bad("VALE port after ':' must be non-empty letters, digits, '_', '-', '.'")
			}
			n.Switch, n.Port = pre, port
			if !n.Pipe {
				n.Kind = KindVALE
			}
		case pre == "netmap":
			if !validIdent(port) {
				return bad("interface after 'netmap:' must be non-empty letters, digits, '_', '-', '.'")
			}
			n.Port = port
		default:
			return bad("unknown subsystem %q (want valeX:port or netmap:name)", pre)
		}
	} else {
		if !validIdent(main) {
			return bad("name must be non-empty letters, digits, '_', '-', '.'")
		}
		n.Port = main
	}
	if strings.HasSuffix(s, "@") {
		return bad("empty option after '@'")
	}
	if opts == "" {
		return n, nil
	}
	for _, o := range strings.Split(opts, "@") {
		switch {
		case o == "":
			return bad("empty option between '@'")
		case strings.HasPrefix(o, "conf:"):
			if err := parseConf(&n.Conf, o[len("conf:"):]); err != nil {
				return bad("%v", err)
			}
		case strings.HasPrefix(o, "share="):
			if n.Share = o[len("share="):]; n.Share == "" {
				return bad("@share= needs a port name")
			}
		default:
			id, err := strconv.Atoi(o)
			if err != nil || id < 1 || id > 65535 {
				return bad("unknown option %q (want @conf:key=value,..., @share=port or @memid 1..65535)", o)
			}
			n.MemID = id
		}
	}
	return n, nil
}

func parseConf(c *Conf, s string) error {
	if s == "" {
		return fmt.Errorf("@conf: needs key=value pairs")
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			return fmt.Errorf("@conf: %q is not key=value", kv)
		}
		x, err := strconv.Atoi(v)
		if err != nil || x < 0 {
			return fmt.Errorf("@conf: %q=%q is not a non-negative number", k, v)
		}
		rings := func() error {
			if x < 1 || x > MaxRings {
				return fmt.Errorf("@conf: %s=%d out of range 1..%d", k, x, MaxRings)
			}
			return nil
		}
		slots := func() error {
			if x < MinSlots || x > MaxSlots {
				return fmt.Errorf("@conf: %s=%d out of range %d..%d", k, x, MinSlots, MaxSlots)
			}
			return nil
		}
		switch k {
		case "rings":
			if err := rings(); err != nil {
				return err
			}
			c.TxRings, c.RxRings = x, x
		case "tx-rings":
			if err := rings(); err != nil {
				return err
			}
			c.TxRings = x
		case "rx-rings":
			if err := rings(); err != nil {
				return err
			}
			c.RxRings = x
		case "host-rings":
			if x > 1 {
				return fmt.Errorf("@conf: host-rings=%d out of range 0..1", x)
			}
			c.HostRings, c.HostRingsSet = x, true
		case "slots":
			if err := slots(); err != nil {
				return err
			}
			c.TxSlots, c.RxSlots = x, x
		case "tx-slots":
			if err := slots(); err != nil {
				return err
			}
			c.TxSlots = x
		case "rx-slots":
			if err := slots(); err != nil {
				return err
			}
			c.RxSlots = x
		default:
			return fmt.Errorf("@conf: unknown key %q (want rings, tx-rings, rx-rings, host-rings, slots, tx-slots, rx-slots)", k)
		}
	}
	return nil
}

// Apply copies the @conf: values that were given into cfg.
func (c Conf) Apply(cfg *PortConfig) {
	set := func(dst *int, v int) {
		if v != 0 {
			*dst = v
		}
	}
	set(&cfg.TxRings, c.TxRings)
	set(&cfg.RxRings, c.RxRings)
	set(&cfg.TxSlots, c.TxSlots)
	set(&cfg.RxSlots, c.RxSlots)
	if c.HostRingsSet {
		cfg.HostRings = c.HostRings
	}
}
