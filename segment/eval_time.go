package segment

import (
	"strings"
	"time"
)

// instant is a point in time as Unix seconds and nanoseconds. It replaces
// time.Time on the hot path because building a time.Time from a parsed date
// costs more than the comparison it serves.
type instant struct {
	sec  int64
	nsec int32
}

func instantOf(t time.Time) instant { return instant{t.Unix(), int32(t.Nanosecond())} }

func (a instant) time() time.Time { return time.Unix(a.sec, int64(a.nsec)) }

func (a instant) add(d time.Duration) instant { return a.addOffset(offsetOf(d)) }

// offset is a time.Duration split into seconds and nanoseconds at Compile,
// so that adding it on the hot path needs no division.
type offset struct {
	sec  int64
	nsec int32 // in (-1e9, 1e9), with the sign of the duration
}

func offsetOf(d time.Duration) offset {
	return offset{int64(d / time.Second), int32(d % time.Second)}
}

func (a instant) addOffset(o offset) instant {
	a.sec += o.sec
	a.nsec += o.nsec
	if a.nsec < 0 {
		a.nsec += 1e9
		a.sec--
	} else if a.nsec >= 1e9 {
		a.nsec -= 1e9
		a.sec++
	}
	return a
}

func (a instant) compare(b instant) int {
	switch {
	case a.sec < b.sec:
		return -1
	case a.sec > b.sec:
		return 1
	case a.nsec < b.nsec:
		return -1
	case a.nsec > b.nsec:
		return 1
	}
	return 0
}

// parseTime parses an RFC 3339 date-time as time.Parse(time.RFC3339, s)
// does, and as RFC 3339 has it where the two part: with a lower-case t or z,
// with a leap second (the next minute's first second), and never with an
// offset of 24 hours; and an RFC 3339 full-date (2006-01-02) as the midnight UTC that
// begins it, as birthdays and sign-up days are often stored. The common
// strict form is parsed by hand without allocating; other forms that
// time.Parse still accepts (a one-digit hour, a comma before the fraction)
// take the slow path, but strings that cannot be dates never do, so a type
// mismatch stays cheap.
func parseTime(s string) (instant, bool) {
	if t, ok := parseRFC3339Fast(s); ok {
		return t, true
	}
	return parseTimeSlow(s)
}

func parseTimeSlow(s string) (instant, bool) {
	if len(s) == len(time.DateOnly) {
		return parseFullDate(s)
	}
	if len(s) < len("2006-01-02T1:04:05Z") || !digits(s[0:4]) || s[4] != '-' {
		return instant{}, false
	}
	// RFC 3339 (section 5.6) lets the T and the Z be lower case; time.Parse
	// does not.
	if s[10] == 't' || s[len(s)-1] == 'z' {
		s = strings.ToUpper(s)
		if t, ok := parseRFC3339Fast(s); ok {
			return t, true
		}
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return instant{}, false
	}
	// time.Parse takes an offset of 24 hours, which RFC 3339 (time-hour
	// 00-23) does not.
	if _, off := t.Zone(); off >= 24*3600 || off <= -24*3600 {
		return instant{}, false
	}
	// It takes an offset's minute of 60 too ("+01:60", read as +02:00),
	// which RFC 3339 (time-minute 00-59) does not.
	if n := len(s); n > 6 && (s[n-6] == '+' || s[n-6] == '-') && s[n-3] == ':' && s[n-2] > '5' {
		return instant{}, false
	}
	return instantOf(t), true
}

// parseRFC3339Fast accepts YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM) with the
// field ranges RFC 3339 allows (time.Parse's, and a leap second). It runs once per date criterion on the
// Match hot path, so the fixed part is read and checked eight bytes at a
// time.
func parseRFC3339Fast(s string) (instant, bool) {
	if len(s) < len("2006-01-02T15:04:05Z") {
		return instant{}, false
	}
	a := le64(s[0:8])   // YYYY-MM-
	b := le64(s[8:16])  // DDTHH:MM
	c := le64(s[11:19]) // HH:MM:SS
	if !swarShape(a, 0x00FFFF00FFFFFFFF, 0xFF0000FF00000000, 0x2D00002D00000000) ||
		!swarShape(b, 0x000000000000FFFF, 0x0000000000FF0000, 0x0000000000540000) ||
		!swarShape(c, 0xFFFF00FFFF00FFFF, 0x0000FF0000FF0000, 0x00003A00003A0000) {
		return instant{}, false
	}
	// Digit bytes are now 0x30-0x39, so their low nibbles are the digits, and
	// w*10 + w>>8 turns each byte into itself times ten plus the next byte:
	// the two-digit numbers starting at each byte, at once.
	const lo = 0x0F0F0F0F0F0F0F0F
	a &= lo
	b &= lo
	c &= lo
	a = a*10 + a>>8
	b = b*10 + b>>8
	c = c*10 + c>>8
	year := int64(a&0xFF)*100 + int64(a>>16&0xFF)
	month := int64(a >> 40 & 0xFF)
	day := int64(b & 0xFF)
	hour := int64(c & 0xFF)
	minute := int64(c >> 24 & 0xFF)
	sec := int64(c >> 48 & 0xFF)
	if month < 1 || month > 12 || day < 1 || (day > 28 && day > daysIn(month, year)) ||
		hour > 23 || minute > 59 || sec > 60 {
		// RFC 3339 allows a leap second (:60), which time.Parse refuses; it
		// is taken for the first second of the next minute.
		return instant{}, false
	}
	s = s[19:]

	var nsec, offset int64
	switch {
	case len(s) == 1 && s[0] == 'Z':
		// The canonical UTC form needs nothing more.
	case len(s) == 5 && s[0] == '.' && s[4] == 'Z' && isDigit(s[1]) && isDigit(s[2]) && isDigit(s[3]):
		// Milliseconds, as JavaScript writes them.
		nsec = (int64(s[1]-'0')*100 + int64(s[2]-'0')*10 + int64(s[3]-'0')) * 1e6
	default:
		var ok bool
		if nsec, offset, ok = parseTail(s); !ok {
			return instant{}, false
		}
	}

	var days int64
	if i := year - yearTableFirst; i >= 0 && i < int64(len(yearTable)) {
		e := yearTable[i]
		days = int64(e>>1) + int64(monthStart[month-1]) + day - 1
		if month > 2 {
			days += int64(e & 1)
		}
		days += yearTableEpoch
	} else {
		days = daysFromCivil(year, month, day)
	}
	return instant{days*86400 + hour*3600 + minute*60 + sec - offset, int32(nsec)}, true
}

// parseFullDate parses an RFC 3339 full-date (YYYY-MM-DD) as the midnight
// UTC that begins it, without allocating.
func parseFullDate(s string) (instant, bool) {
	if len(s) != 10 || !digits(s[0:4]) || s[4] != '-' || !digits(s[5:7]) || s[7] != '-' || !digits(s[8:10]) {
		return instant{}, false
	}
	year := int64(s[0]-'0')*1000 + int64(s[1]-'0')*100 + int64(s[2]-'0')*10 + int64(s[3]-'0')
	month := int64(s[5]-'0')*10 + int64(s[6]-'0')
	day := int64(s[8]-'0')*10 + int64(s[9]-'0')
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) {
		return instant{}, false
	}
	return instant{daysFromCivil(year, month, day) * 86400, 0}, true
}

// parseTail parses the rest of an RFC 3339 date after the seconds: an
// optional fraction, then Z or a ±HH:MM offset. It returns the nanoseconds
// and the offset east of UTC in seconds.
func parseTail(s string) (nsec, offset int64, ok bool) {
	if len(s) >= 2 && s[0] == '.' && isDigit(s[1]) {
		n := 1
		for ; n < len(s) && isDigit(s[n]); n++ {
			// Digits past nanoseconds are dropped, as time.Parse does.
			if n <= 9 {
				nsec = nsec*10 + int64(s[n]-'0')
			}
		}
		if n <= 9 {
			nsec *= pow10[10-n]
		}
		s = s[n:]
	}
	switch {
	case len(s) == 1 && s[0] == 'Z':
		return nsec, 0, true
	case len(s) == 6 && (s[0] == '+' || s[0] == '-') && s[3] == ':':
		oh, okh := num(s[1:3])
		om, okm := num(s[4:6])
		if !okh || !okm || oh > 23 || om > 59 {
			return 0, 0, false
		}
		offset = (oh*60 + om) * 60
		if s[0] == '-' {
			offset = -offset
		}
		return nsec, offset, true
	}
	return 0, 0, false
}

// yearTable holds, for each year from yearTableFirst, the days from
// yearTableFirst-01-01 to its 1 January, shifted left once, with the low bit
// set in leap years. A table lookup is shorter than the civil calendar
// arithmetic on the hot path, for the years profiles hold.
var yearTable = func() (t [400]uint32) {
	days := uint32(0)
	for i := range t {
		y := yearTableFirst + int64(i)
		leap := y%4 == 0 && (y%100 != 0 || y%400 == 0)
		t[i] = days << 1
		if leap {
			t[i] |= 1
			days += 366
		} else {
			days += 365
		}
	}
	return t
}()

const yearTableFirst = 1900

// yearTableEpoch is the day of yearTableFirst-01-01 counted from 1970-01-01.
const yearTableEpoch = -25567

// monthStart is the day of the year each month starts on, in common years.
var monthStart = [12]uint16{0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334}

// daysFromCivil returns the number of days from 1970-01-01 to the given
// proleptic Gregorian date of a year in [0, 9999] (Howard Hinnant's
// algorithm, shifted by one 400-year era to stay in unsigned arithmetic).
func daysFromCivil(year, month, day int64) int64 {
	y, m, d := uint64(year)+400, uint64(month), uint64(day)
	if m <= 2 {
		y--
		m += 9
	} else {
		m -= 3
	}
	era := y / 400
	yoe := y - era*400
	doe := yoe*365 + yoe/4 - yoe/100 + (153*m+2)/5 + d - 1
	return int64(era*146097+doe) - 719468 - 146097
}

var pow10 = [...]int64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9}

// le64 reads s[0:8] as a little-endian word; the compiler merges the loads.
func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// swarShape reports whether the bytes of w selected by digitMask are ASCII
// digits and those selected by sepMask equal the same bytes of sep.
func swarShape(w, digitMask, sepMask, sep uint64) bool {
	const hi, lo, six, carry = 0xF0F0F0F0F0F0F0F0, 0x0F0F0F0F0F0F0F0F, 0x0606060606060606, 0x1010101010101010
	return w&sepMask == sep &&
		w&digitMask&hi == 0x3030303030303030&digitMask &&
		// A low nibble above 9 carries into bit 4 once 6 is added.
		((w&digitMask&lo)+six&digitMask)&carry == 0
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return true
}

// num parses a short run of decimal digits.
func num(s string) (int64, bool) {
	var n int64
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, false
		}
		n = n*10 + int64(s[i]-'0')
	}
	return n, true
}

func daysIn(month, year int64) int64 {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}
