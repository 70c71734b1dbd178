package rtc

import (
	"sync"
	"time"
)

// Ports relative to Base.
const (
	Base = 0x70
	Size = 2
)

// CMOS register indices.
const (
	RegSeconds = 0x00
	RegMinutes = 0x02
	RegHours   = 0x04
	RegWeekday = 0x06
	RegDay     = 0x07
	RegMonth   = 0x08
	RegYear    = 0x09
	RegA       = 0x0A
	RegB       = 0x0B
	RegC       = 0x0C
	RegD       = 0x0D
	RegCentury = 0x32

	regBHour24 = 1 << 1
	regDValid  = 1 << 7
)

// CMOS is the clock and its 128 bytes of NVRAM. Use New.
type CMOS struct {
	mu    sync.Mutex
	now   func() time.Time
	index byte
	nvram [128]byte
}

// New returns a CMOS whose clock reads now (nil: time.Now in UTC).
func New(now func() time.Time) *CMOS {
	if now == nil {
		now = func() time.Time { return time.Now().UTC() }
	}
	c := &CMOS{now: now}
	c.nvram[RegA] = 0x26 // 32.768 kHz time base, 1024 Hz rate; UIP clear
	c.nvram[RegB] = regBHour24
	c.nvram[RegD] = regDValid
	return c
}

func bcd(v int) byte { return byte(v/10<<4 | v%10) }

// Read handles a guest read at Base+off (bus.Device).
func (c *CMOS) Read(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	clear(data)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch off {
	case 0:
		data[0] = 0xFF // the index register is write-only
	case 1:
		data[0] = c.reg(c.index)
	}
}

func (c *CMOS) reg(i byte) byte {
	t := c.now()
	switch i {
	case RegSeconds:
		return bcd(t.Second())
	case RegMinutes:
		return bcd(t.Minute())
	case RegHours:
		return bcd(t.Hour())
	case RegWeekday:
		return bcd(int(t.Weekday()) + 1)
	case RegDay:
		return bcd(t.Day())
	case RegMonth:
		return bcd(int(t.Month()))
	case RegYear:
		return bcd(t.Year() % 100)
	case RegCentury:
		return bcd(t.Year() / 100 % 100)
	case RegC:
		return 0 // no interrupt flags; reading clears them anyway
	}
	return c.nvram[i]
}

// Write handles a guest write at Base+off (bus.Device).
func (c *CMOS) Write(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch off {
	case 0:
		c.index = data[0] & 0x7F // bit 7 is the NMI mask
	case 1:
		switch c.index {
		case RegSeconds, RegMinutes, RegHours, RegWeekday, RegDay, RegMonth, RegYear, RegCentury, RegC, RegD:
			// Setting the clock is not supported; the host clock stays authoritative.
		case RegB:
			// Keep binary/12-hour modes off: the reads above are always BCD, 24-hour.
			c.nvram[RegB] = data[0]&^(1<<2) | regBHour24
		default:
			c.nvram[c.index] = data[0]
		}
	}
}
