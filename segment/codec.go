package segment

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
)

// The stored form of a profile is a compact binary encoding: decoding it
// is several times cheaper than decoding JSON, and every stream event,
// backfill and audience search decodes a stored profile. It starts with
// profileMagic, which JSON never does, so profiles stored as JSON are still
// read.
//
//	profile = magic object
//	value   = tagNull | tagFalse | tagTrue
//	        | tagInt   varint            (a whole number of magnitude < 2^53)
//	        | tagFloat 8 bytes, IEEE 754 little-endian
//	        | tagString uvarint(len) bytes
//	        | tagArray  uvarint(n) value*n
//	        | tagObject uvarint(n) (uvarint(len) key-bytes value)*n
const profileMagic = 0xB1

const (
	tagNull byte = iota
	tagFalse
	tagTrue
	tagInt
	tagFloat
	tagString
	tagArray
	tagObject
)

// maxExactInt bounds the whole numbers stored as varints: every integer of
// smaller magnitude is exact in a float64.
const maxExactInt = 1 << 53

// AppendProfile appends the stored encoding of p to dst. Values of types
// other than those encoding/json decodes into are stored as their JSON
// decoding would give them back.
func AppendProfile(dst []byte, p *Profile) []byte {
	dst = append(dst, profileMagic, tagObject)
	dst = binary.AppendUvarint(dst, uint64(p.Len()))
	if p == nil {
		return dst
	}
	for i, v := range p.known {
		if v != nil {
			dst = appendField(dst, knownFields[i], v)
		}
	}
	for k, v := range p.other {
		dst = appendField(dst, k, v)
	}
	return dst
}

func appendObject(dst []byte, m map[string]any) []byte {
	dst = append(dst, tagObject)
	dst = binary.AppendUvarint(dst, uint64(len(m)))
	for k, v := range m {
		dst = appendField(dst, k, v)
	}
	return dst
}

func appendField(dst []byte, k string, v any) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(k)))
	dst = append(dst, k...)
	return appendValue(dst, v)
}

func appendValue(dst []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(dst, tagNull)
	case bool:
		if x {
			return append(dst, tagTrue)
		}
		return append(dst, tagFalse)
	case float64:
		if x == math.Trunc(x) && x > -maxExactInt && x < maxExactInt && (x != 0 || !math.Signbit(x)) {
			return binary.AppendVarint(append(dst, tagInt), int64(x))
		}
		return binary.LittleEndian.AppendUint64(append(dst, tagFloat), math.Float64bits(x))
	case string:
		dst = binary.AppendUvarint(append(dst, tagString), uint64(len(x)))
		return append(dst, x...)
	case []any:
		dst = binary.AppendUvarint(append(dst, tagArray), uint64(len(x)))
		for _, e := range x {
			dst = appendValue(dst, e)
		}
		return dst
	case map[string]any:
		return appendObject(dst, x)
	}
	// Anything else (an int from Go code, a json.Number) is stored as JSON
	// would carry it; what JSON cannot carry is stored as null.
	var norm any
	if b, err := json.Marshal(v); err == nil && json.Unmarshal(b, &norm) == nil {
		return appendValue(dst, norm) // only JSON's own types: no further fallback
	}
	return append(dst, tagNull)
}

// DecodeProfile decodes a stored profile: the binary encoding of
// AppendProfile, or JSON. Numbers come back as float64, arrays as []any and
// objects as map[string]any, as from encoding/json. It takes the stored
// bytes as a string too, as a Redis client returns them: a string is
// decoded without a copy.
func DecodeProfile[B ~string | ~[]byte](b B) (*Profile, error) {
	return DecodeProfileKeys(b, nil)
}

// DecodeUserProfile is DecodeProfileKeys for the stored profile of the
// user userID, whose userId field is always the user's own id: the one its
// events are keyed by, whatever a profile or a patch said, and also in a
// profile stored before segmentd kept it there.
func DecodeUserProfile[B ~string | ~[]byte](b B, keys []string, userID string) (*Profile, error) {
	p, err := DecodeProfileKeys(b, keys)
	if err != nil {
		return nil, err
	}
	p.Set("userId", userID)
	return p, nil
}

// DecodeProfileKeys is DecodeProfile keeping only the top-level fields
// named in keys (every field when keys is nil). The others are stepped over
// and checked, not built, which is most of the work when a rule reads a few
// fields of a large profile: a profile decoded for Rule.ProfileKeys
// evaluates as the whole profile would.
func DecodeProfileKeys[B ~string | ~[]byte](b B, keys []string) (*Profile, error) {
	// Every key and string value of the profile is a slice of s: one copy
	// of a []byte, none of a string.
	s := string(b)
	if len(s) == 0 || s[0] != profileMagic {
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			return nil, fmt.Errorf("decode profile: %w", err)
		}
		if m == nil {
			return nil, errors.New("decode profile: not an object")
		}
		if keys != nil {
			maps.DeleteFunc(m, func(k string, _ any) bool { return !slices.Contains(keys, k) })
		}
		return NewProfile(m), nil
	}
	d := decoder{s: s[1:]}
	if d.next() != tagObject {
		return nil, errors.New("decode profile: not an object")
	}
	p, err := d.profile(keys)
	if err != nil {
		return nil, fmt.Errorf("decode profile: %w", err)
	}
	if d.i != len(d.s) {
		return nil, errors.New("decode profile: trailing bytes")
	}
	return p, nil
}

type decoder struct {
	s string
	i int
}

var errShort = errors.New("truncated")

func (d *decoder) next() byte {
	if d.i >= len(d.s) {
		return 0xFF
	}
	c := d.s[d.i]
	d.i++
	return c
}

func (d *decoder) uvarint() (uint64, error) {
	var x uint64
	for shift := uint(0); shift < 64; shift += 7 {
		if d.i >= len(d.s) {
			return 0, errShort
		}
		c := d.s[d.i]
		d.i++
		x |= uint64(c&0x7F) << shift
		if c < 0x80 {
			return x, nil
		}
	}
	return 0, errors.New("varint overflow")
}

// length reads a count of items that each take at least one byte, so that
// a corrupt count cannot make the decoder allocate more than the input.
func (d *decoder) length() (int, error) {
	n, err := d.uvarint()
	if err != nil {
		return 0, err
	}
	if n > uint64(len(d.s)-d.i) {
		return 0, errShort
	}
	return int(n), nil
}

func (d *decoder) str() (string, error) {
	n, err := d.length()
	if err != nil {
		return "", err
	}
	s := d.s[d.i : d.i+n]
	d.i += n
	return s, nil
}

// profile decodes the top-level object, keeping the fields named in keys
// (every field when keys is nil).
func (d *decoder) profile(keys []string) (*Profile, error) {
	n, err := d.length()
	if err != nil {
		return nil, err
	}
	p := &Profile{}
	for i := range n {
		k, err := d.str()
		if err != nil {
			return nil, err
		}
		if keys != nil && !slices.Contains(keys, k) {
			if err := d.skip(); err != nil {
				return nil, err
			}
			continue
		}
		v, err := d.value()
		if err != nil {
			return nil, err
		}
		if v == nil {
			continue
		}
		if slot := knownSlot(k); slot >= 0 {
			p.known[slot] = v
			continue
		}
		if p.other == nil {
			p.other = make(map[string]any, n-i)
		}
		p.other[k] = v
	}
	return p, nil
}

func (d *decoder) object() (map[string]any, error) {
	n, err := d.length()
	if err != nil {
		return nil, err
	}
	m := make(map[string]any, n)
	for range n {
		k, err := d.str()
		if err != nil {
			return nil, err
		}
		v, err := d.value()
		if err != nil {
			return nil, err
		}
		m[k] = v
	}
	return m, nil
}

// skip steps over one value, checking it as value would.
func (d *decoder) skip() error {
	switch d.next() {
	case tagNull, tagFalse, tagTrue:
		return nil
	case tagInt:
		_, err := d.uvarint()
		return err
	case tagFloat:
		if len(d.s)-d.i < 8 {
			return errShort
		}
		d.i += 8
		return nil
	case tagString:
		_, err := d.str()
		return err
	case tagArray, tagObject:
		object := d.s[d.i-1] == tagObject
		n, err := d.length()
		for ; err == nil && n > 0; n-- {
			if object {
				if _, err = d.str(); err != nil {
					break
				}
			}
			err = d.skip()
		}
		return err
	case 0xFF:
		return errShort
	}
	return fmt.Errorf("unknown tag at byte %d", d.i-1)
}

func (d *decoder) value() (any, error) {
	switch d.next() {
	case tagNull:
		return nil, nil
	case tagFalse:
		return false, nil
	case tagTrue:
		return true, nil
	case tagInt:
		u, err := d.uvarint()
		if err != nil {
			return nil, err
		}
		// Zig-zag, as binary.AppendVarint writes it.
		x := int64(u >> 1)
		if u&1 != 0 {
			x = ^x
		}
		return float64(x), nil
	case tagFloat:
		if len(d.s)-d.i < 8 {
			return nil, errShort
		}
		var bits uint64
		for j := 7; j >= 0; j-- {
			bits = bits<<8 | uint64(d.s[d.i+j])
		}
		d.i += 8
		return math.Float64frombits(bits), nil
	case tagString:
		return d.str()
	case tagArray:
		n, err := d.length()
		if err != nil {
			return nil, err
		}
		a := make([]any, n)
		for i := range a {
			if a[i], err = d.value(); err != nil {
				return nil, err
			}
		}
		return a, nil
	case tagObject:
		return d.object()
	case 0xFF:
		return nil, errShort
	}
	return nil, fmt.Errorf("unknown tag at byte %d", d.i-1)
}
