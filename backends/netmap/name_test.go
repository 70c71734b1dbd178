package netmap

import (
	"strings"
	"testing"
)

func TestParseName(t *testing.T) {
	cases := []struct {
		in   string
		want Name
	}{
		{"vale0:1", Name{Kind: KindVALE, Switch: "vale0", Port: "1", Base: "vale0:1"}},
		{"vale:vm1", Name{Kind: KindVALE, Switch: "vale", Port: "vm1", Base: "vale:vm1"}},
		{"valeX:p{3", Name{Kind: KindPipeMaster, Switch: "valeX", Port: "p", Base: "valeX:p", Pipe: true, PipeID: "3"}},
		{"mypipe}7", Name{Kind: KindPipeSlave, Port: "mypipe", Base: "mypipe", Pipe: true, PipeID: "7"}},
		{"netmap:eth0@conf:rings=2,host-rings=1,slots=512", Name{Port: "eth0", Base: "netmap:eth0",
			Conf: Conf{TxRings: 2, RxRings: 2, HostRings: 1, HostRingsSet: true, TxSlots: 512, RxSlots: 512}}},
		{"vale1:a@conf:tx-rings=3,rx-slots=64@5", Name{Kind: KindVALE, Switch: "vale1", Port: "a", Base: "vale1:a",
			Conf: Conf{TxRings: 3, RxSlots: 64}, MemID: 5}},
		{"vale1:b@share=vale1:a", Name{Kind: KindVALE, Switch: "vale1", Port: "b", Base: "vale1:b", Share: "vale1:a"}},
	}
	for _, c := range cases {
		got, err := ParseName(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		c.want.Full = c.in
		if got != c.want {
			t.Errorf("%q:\n got %+v\nwant %+v", c.in, got, c.want)
		}
	}
}

func TestParseNameErrors(t *testing.T) {
	cases := map[string]string{
		"":                          "empty",
		"vale0:":                    "VALE port",
		"vale0:a b":                 "VALE port",
		"foo:bar":                   "unknown subsystem",
		"p{":                        "pipe suffix",
		"vale0:1@":                  "empty option",
		"vale0:1@@conf:slots=8":     "empty option",
		"vale0:1@conf:slots=1":      "out of range",
		"vale0:1@conf:slots=9999":   "out of range",
		"vale0:1@conf:rings=0":      "out of range",
		"vale0:1@conf:host-rings=2": "out of range",
		"vale0:1@conf:speed=10":     "unknown key",
		"vale0:1@conf:slots":        "not key=value",
		"vale0:1@conf:slots=x":      "not a non-negative number",
		"vale0:1@bogus":             "unknown option",
		"vale0:1@0":                 "unknown option",
		"vale0:1@share=":            "needs a port name",
		strings.Repeat("a", 64):     "longer than 63",
	}
	for in, want := range cases {
		_, err := ParseName(in)
		if err == nil {
			t.Errorf("%q accepted", in)
			continue
		}
		if !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error %q, want one line mentioning %q", in, err, want)
		}
	}
}

func TestConfApply(t *testing.T) {
	n, err := ParseName("vale0:x@conf:rings=4,tx-slots=128,host-rings=0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := PortConfig{HostRings: 1, RxSlots: 256}
	n.Conf.Apply(&cfg)
	if cfg.TxRings != 4 || cfg.RxRings != 4 || cfg.TxSlots != 128 || cfg.RxSlots != 256 || cfg.HostRings != 0 {
		t.Fatalf("applied %+v", cfg)
	}
}
