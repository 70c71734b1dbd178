// Package rtc emulates the PC CMOS (MC146818 real-time clock and NVRAM) at ports
// 0x70 (index) and 0x71 (data) far enough for Linux to read the wall-clock time at
// boot: the time registers report the host clock in BCD, 24-hour mode, with no update
// ever in progress; no alarms or periodic interrupts. Other CMOS bytes are plain
// storage (zero at start: no memory sizes, since e820 describes memory).
//
// Concurrency: safe for concurrent use.
package rtc
