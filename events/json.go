package events

import (
	"errors"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// jsonReader decodes JSON values into encoding/json's default types (objects
// map[string]any, arrays []any, numbers float64, strings, booleans, nil for
// null) and accepts and rejects exactly the documents encoding/json does,
// as FuzzJSONValue checks. It exists because decoding profile events was
// the largest cost of the stream after Redis: encoding/json validates every
// document in a first pass and decodes through reflection in a second.
//
// It reads from a string: every key and plain string it returns is a slice
// of the input, so a document costs one copy rather than one allocation per
// string.
type jsonReader struct {
	b     string
	i     int
	depth int
	// lossy is set when a string read had invalid UTF-8 or an unpaired
	// surrogate, which reading turned into U+FFFD.
	lossy bool
}

// maxJSONDepth is encoding/json's limit on nesting.
const maxJSONDepth = 10000

var errJSONEnd = errors.New("unexpected end of JSON input")

func (r *jsonReader) syntaxError(what string) error {
	if r.i >= len(r.b) {
		return errJSONEnd
	}
	return fmt.Errorf("invalid character %q %s at offset %d", r.b[r.i], what, r.i)
}

// space skips JSON whitespace.
func (r *jsonReader) space() {
	for r.i < len(r.b) {
		switch r.b[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// peek returns the next byte after whitespace, 0 at the end.
func (r *jsonReader) peek() byte {
	r.space()
	if r.i >= len(r.b) {
		return 0
	}
	return r.b[r.i]
}

// end checks that nothing but whitespace follows the value read.
func (r *jsonReader) end() error {
	if r.space(); r.i < len(r.b) {
		return r.syntaxError("after top-level value")
	}
	return nil
}

// value reads any JSON value.
func (r *jsonReader) value() (any, error) {
	switch c := r.peek(); {
	case c == '{':
		return r.object()
	case c == '[':
		return r.array()
	case c == '"':
		return r.str()
	case c == '-' || c >= '0' && c <= '9':
		return r.number()
	case c == 't':
		return true, r.literal("true")
	case c == 'f':
		return false, r.literal("false")
	case c == 'n':
		return nil, r.literal("null")
	}
	return nil, r.syntaxError("looking for beginning of value")
}

func (r *jsonReader) literal(word string) error {
	for j := range len(word) {
		if r.i >= len(r.b) || r.b[r.i] != word[j] {
			return r.syntaxError("in literal " + word)
		}
		r.i++
	}
	return nil
}

// object reads an object, at its '{'.
func (r *jsonReader) object() (map[string]any, error) {
	m := make(map[string]any)
	err := r.members(func(k string) (err error) {
		m[k], err = r.value()
		return err
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// members reads an object, at its '{', calling member with each key with
// the reader at the key's value, which member must read.
func (r *jsonReader) members(member func(k string) error) error {
	if err := r.enter(); err != nil {
		return err
	}
	r.i++
	if r.peek() == '}' {
		r.i++
		r.depth--
		return nil
	}
	for {
		k, err := r.key()
		if err != nil {
			return err
		}
		if err := member(k); err != nil {
			return err
		}
		switch r.peek() {
		case ',':
			r.i++
		case '}':
			r.i++
			r.depth--
			return nil
		default:
			return r.syntaxError("after object key:value pair")
		}
	}
}

// key reads an object key and the colon after it.
func (r *jsonReader) key() (string, error) {
	if r.peek() != '"' {
		return "", r.syntaxError("looking for beginning of object key string")
	}
	k, err := r.str()
	if err != nil {
		return "", err
	}
	if r.peek() != ':' {
		return "", r.syntaxError("after object key")
	}
	r.i++
	return k, nil
}

func (r *jsonReader) array() ([]any, error) {
	a := []any{}
	err := r.elements(func() error {
		v, err := r.value()
		a = append(a, v)
		return err
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// elements reads an array, at its '[', calling element with the reader at
// each element, which element must read.
func (r *jsonReader) elements(element func() error) error {
	if err := r.enter(); err != nil {
		return err
	}
	r.i++
	if r.peek() == ']' {
		r.i++
		r.depth--
		return nil
	}
	for {
		if err := element(); err != nil {
			return err
		}
		switch r.peek() {
		case ',':
			r.i++
		case ']':
			r.i++
			r.depth--
			return nil
		default:
			return r.syntaxError("after array element")
		}
	}
}

// skip reads past any value, checking its grammar without building it: a
// field the event does not use is ignored whatever it holds (a number out
// of a float64's range, say), as encoding/json ignores it.
func (r *jsonReader) skip() error {
	switch c := r.peek(); {
	case c == '{':
		return r.members(func(string) error { return r.skip() })
	case c == '[':
		return r.elements(r.skip)
	case c == '"':
		_, err := r.str()
		return err
	case c == '-' || c >= '0' && c <= '9':
		_, err := r.numberText()
		return err
	case c == 't':
		return r.literal("true")
	case c == 'f':
		return r.literal("false")
	case c == 'n':
		return r.literal("null")
	}
	return r.syntaxError("looking for beginning of value")
}

func (r *jsonReader) enter() error {
	if r.depth++; r.depth > maxJSONDepth {
		return errors.New("exceeded max depth")
	}
	return nil
}

// str reads a string, at its opening quote. Strings without escapes or
// non-ASCII bytes, nearly all of them, are copied once.
func (r *jsonReader) str() (string, error) {
	r.i++
	start := r.i
	for r.i < len(r.b) {
		switch c := r.b[r.i]; {
		case c == '"':
			s := r.b[start:r.i]
			r.i++
			return s, nil
		case c == '\\' || c >= utf8.RuneSelf:
			return r.strSlow(start)
		case c < ' ':
			return "", r.syntaxError("in string literal")
		}
		r.i++
	}
	return "", errJSONEnd
}

// strSlow finishes a string that has escapes or non-ASCII bytes, decoding
// them as encoding/json does: invalid UTF-8 and unpaired surrogates become
// U+FFFD.
func (r *jsonReader) strSlow(start int) (string, error) {
	out := make([]byte, 0, r.i-start+16)
	out = append(out, r.b[start:r.i]...)
	for r.i < len(r.b) {
		c := r.b[r.i]
		switch {
		case c == '"':
			r.i++
			return string(out), nil
		case c < ' ':
			return "", r.syntaxError("in string literal")
		case c >= utf8.RuneSelf:
			rn, size := utf8.DecodeRuneInString(r.b[r.i:])
			if rn == utf8.RuneError && size == 1 {
				r.lossy = true
			}
			r.i += size
			out = utf8.AppendRune(out, rn)
			continue
		case c != '\\':
			out = append(out, c)
			r.i++
			continue
		}
		r.i++
		if r.i >= len(r.b) {
			return "", errJSONEnd
		}
		switch e := r.b[r.i]; e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			rn, ok := r.hex4(r.i + 1)
			if !ok {
				if r.i+5 > len(r.b) {
					return "", errJSONEnd
				}
				return "", r.syntaxError("in \\u hexadecimal character escape")
			}
			r.i += 4
			if utf16.IsSurrogate(rn) {
				// A pair only when "\uXXXX" follows and completes it.
				if r.i+2 < len(r.b) && r.b[r.i+1] == '\\' && r.b[r.i+2] == 'u' {
					if rn2, ok := r.hex4(r.i + 3); ok {
						if d := utf16.DecodeRune(rn, rn2); d != unicode.ReplacementChar {
							r.i += 6
							out = utf8.AppendRune(out, d)
							break
						}
					}
				}
				rn = unicode.ReplacementChar
				r.lossy = true
			}
			out = utf8.AppendRune(out, rn)
		default:
			return "", r.syntaxError("in string escape code")
		}
		r.i++
	}
	return "", errJSONEnd
}

// hex4 reads the four hex digits at j.
func (r *jsonReader) hex4(j int) (rune, bool) {
	if j+4 > len(r.b) {
		return 0, false
	}
	var n rune
	for _, c := range []byte(r.b[j : j+4]) {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		n = n*16 + rune(c)
	}
	return n, true
}

// number reads a number as a float64, as encoding/json does into an any.
func (r *jsonReader) number() (any, error) {
	raw, err := r.numberText()
	if err != nil {
		return nil, err
	}
	// Whole numbers of up to 15 digits are exact in a float64: no parsing
	// of the general form, and no allocation.
	if len(raw) <= 15 {
		neg := raw[0] == '-'
		digits := raw
		if neg {
			digits = raw[1:]
		}
		var n int64
		whole := true
		for _, c := range digits {
			if c < '0' || c > '9' {
				whole = false
				break
			}
			n = n*10 + int64(c-'0')
		}
		if whole {
			if neg {
				return -float64(n), nil
			}
			return float64(n), nil
		}
	}
	f, err := strconv.ParseFloat(raw, 64)
	if err != nil {
		return nil, fmt.Errorf("cannot decode number %s into a float64", raw)
	}
	return f, nil
}

// numberText reads the text of a number, checking its grammar.
func (r *jsonReader) numberText() (string, error) {
	start := r.i
	digits := func() int {
		n := 0
		for r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9' {
			r.i++
			n++
		}
		return n
	}
	if r.b[r.i] == '-' {
		r.i++
	}
	switch {
	case r.i < len(r.b) && r.b[r.i] == '0':
		r.i++
	case digits() == 0:
		return "", r.syntaxError("in numeric literal")
	}
	if r.i < len(r.b) && r.b[r.i] == '.' {
		r.i++
		if digits() == 0 {
			return "", r.syntaxError("after decimal point in numeric literal")
		}
	}
	if r.i < len(r.b) && (r.b[r.i] == 'e' || r.b[r.i] == 'E') {
		r.i++
		if r.i < len(r.b) && (r.b[r.i] == '+' || r.b[r.i] == '-') {
			r.i++
		}
		if digits() == 0 {
			return "", r.syntaxError("in exponent of numeric literal")
		}
	}
	return r.b[start:r.i], nil
}
