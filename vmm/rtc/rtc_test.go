package rtc

import (
	"testing"
	"time"
)

func get(c *CMOS, reg byte) byte {
	c.Write(0, []byte{reg | 0x80}) // NMI-mask bit must be ignored
	b := []byte{0}
	c.Read(1, b)
	return b[0]
}

func TestTimeInBCD(t *testing.T) {
	at := time.Date(2026, time.November, 21, 23, 45, 9, 0, time.UTC) // a Saturday
	c := New(func() time.Time { return at })
	want := map[byte]byte{
		RegSeconds: 0x09, RegMinutes: 0x45, RegHours: 0x23, RegWeekday: 0x07,
		RegDay: 0x21, RegMonth: 0x11, RegYear: 0x26, RegCentury: 0x20,
	}
	for r, w := range want {
		if got := get(c, r); got != w {
			t.Errorf("register %#x = %#x, want %#x", r, got, w)
		}
	}
	if get(c, RegA)&0x80 != 0 {
		t.Error("update in progress reported")
	}
	if get(c, RegB)&(1<<2) != 0 || get(c, RegB)&regBHour24 == 0 {
		t.Error("register B not BCD/24-hour")
	}
	if get(c, RegD)&regDValid == 0 {
		t.Error("register D reports invalid RAM/time")
	}
}

func TestNVRAMAndReadOnlyClock(t *testing.T) {
	at := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	c := New(func() time.Time { return at })
	c.Write(0, []byte{0x40})
	c.Write(1, []byte{0x99})
	if get(c, 0x40) != 0x99 {
		t.Error("NVRAM byte not stored")
	}
	c.Write(0, []byte{RegHours})
	c.Write(1, []byte{0x12})
	if get(c, RegHours) != 0x00 {
		t.Error("guest changed the clock")
	}
	c.Write(0, []byte{RegB})
	c.Write(1, []byte{0x04}) // binary mode, 12-hour
	if b := get(c, RegB); b&(1<<2) != 0 || b&regBHour24 == 0 {
		t.Errorf("register B accepted a mode we do not emulate: %#x", b)
	}
	b := []byte{0, 0}
	c.Read(0, b)
	c.Read(5, b)
	c.Write(5, b)
}
