package membership

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// An outbox is stored as the concatenation of its entries, each one
//
//	0xE1 uvarint(len) eventId varint(version) varint(rev) uvarint(len) cause
//	varint(atMillis) uvarint(n) (uvarint(len) segmentId entered-byte)*n
//
// so that the amend script appends an entry by concatenation, and reading
// one costs no JSON parsing. An outbox stored as JSON (a list) is still read.
const entryMagic = 0xE1

// appendEntry appends the stored form of e to dst.
func appendEntry(dst []byte, e OutboxEntry) []byte {
	dst = append(dst, entryMagic)
	dst = appendString(dst, e.EventID)
	dst = binary.AppendVarint(dst, e.Version)
	dst = binary.AppendVarint(dst, e.Rev)
	dst = appendString(dst, e.CauseType)
	dst = binary.AppendVarint(dst, e.AtMillis)
	dst = binary.AppendUvarint(dst, uint64(len(e.Changes)))
	for _, c := range e.Changes {
		dst = appendString(dst, c.SegmentID)
		if c.Entered {
			dst = append(dst, 1)
		} else {
			dst = append(dst, 0)
		}
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// encodeOutbox returns the stored form of an outbox.
func encodeOutbox(es []OutboxEntry) []byte { return AppendOutbox(nil, es) }

// AppendState appends a compact binary form of a user's state to dst, for
// a caller that keeps states outside Redis: revision, version, deleted,
// profile, applied position, segments, the revisions of the outbox's
// entries marked published, then the outbox in its stored form.
func AppendState(dst []byte, st UserState) []byte {
	dst = binary.AppendVarint(dst, st.Rev)
	dst = binary.AppendVarint(dst, st.Version)
	deleted := byte(0)
	if st.Deleted {
		deleted = 1
	}
	dst = append(dst, deleted)
	dst = appendString(dst, st.Profile)
	dst = appendString(dst, st.Applied)
	dst = binary.AppendUvarint(dst, uint64(len(st.Segments)))
	for _, seg := range st.Segments {
		dst = appendString(dst, seg)
	}
	n := 0
	for _, e := range st.Outbox {
		if e.Published {
			n++
		}
	}
	dst = binary.AppendUvarint(dst, uint64(n))
	for _, e := range st.Outbox {
		if e.Published {
			dst = binary.AppendVarint(dst, e.Rev)
		}
	}
	return AppendOutbox(dst, st.Outbox)
}

// DecodeState reads what AppendState wrote. The state's strings are
// substrings of s.
func DecodeState(s string) (UserState, error) {
	r := binReader{s: s}
	st := UserState{Rev: r.varint(), Version: r.varint(), Deleted: r.byte() == 1, Profile: r.str(), Applied: r.str()}
	n := r.uvarint()
	if n > uint64(len(r.s)-r.i) {
		r.fail()
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		st.Segments = append(st.Segments, r.str())
	}
	n = r.uvarint()
	if n > uint64(len(r.s)-r.i) {
		r.fail()
	}
	var published []int64
	for i := uint64(0); i < n && r.err == nil; i++ {
		published = append(published, r.varint())
	}
	if r.err != nil {
		return st, fmt.Errorf("user state: %w", r.err)
	}
	es, err := DecodeOutbox(s[r.i:])
	for i := range es {
		es[i].Published = slices.Contains(published, es[i].Rev)
	}
	st.Outbox = es
	return st, err
}

// AppendOutbox appends the stored form of an outbox to dst.
func AppendOutbox(dst []byte, es []OutboxEntry) []byte {
	for _, e := range es {
		dst = appendEntry(dst, e)
	}
	return dst
}

// DecodeOutbox reads an outbox in its stored form, binary or JSON.
func DecodeOutbox(s string) ([]OutboxEntry, error) {
	if s == "" || s == "null" {
		return nil, nil
	}
	if s[0] == '[' {
		var es []OutboxEntry
		if err := json.Unmarshal([]byte(s), &es); err != nil {
			return nil, err
		}
		return es, nil
	}
	r := binReader{s: s}
	var es []OutboxEntry
	for r.i < len(r.s) {
		e, err := r.entry()
		if err != nil {
			return nil, fmt.Errorf("outbox entry %d: %w", len(es), err)
		}
		es = append(es, e)
	}
	return es, nil
}

// binReader reads the binary forms of this file: varints, strings
// prefixed by their uvarint length, bytes. The first error ends reading.
type binReader struct {
	s   string
	i   int
	err error
}

var errTruncated = errors.New("truncated")

func (r *binReader) entry() (OutboxEntry, error) {
	if r.s[r.i] != entryMagic {
		return OutboxEntry{}, fmt.Errorf("unexpected byte %#x", r.s[r.i])
	}
	r.i++
	e := OutboxEntry{EventID: r.str(), Version: r.varint(), Rev: r.varint(), CauseType: r.str(), AtMillis: r.varint()}
	n := r.uvarint()
	if n > uint64(len(r.s)-r.i) {
		r.fail()
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		e.Changes = append(e.Changes, OutboxChange{SegmentID: r.str(), Entered: r.byte() == 1})
	}
	return e, r.err
}

func (r *binReader) byte() byte {
	if r.i >= len(r.s) {
		r.fail()
		return 0
	}
	r.i++
	return r.s[r.i-1]
}

func (r *binReader) fail() {
	if r.err == nil {
		r.err = errTruncated
	}
	r.i = len(r.s)
}

func (r *binReader) uvarint() uint64 {
	x, n := binary.Uvarint([]byte(r.s[r.i:min(len(r.s), r.i+binary.MaxVarintLen64)]))
	if n <= 0 {
		r.fail()
		return 0
	}
	r.i += n
	return x
}

func (r *binReader) varint() int64 {
	u := r.uvarint()
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x
}

func (r *binReader) str() string {
	n := r.uvarint()
	if n > uint64(len(r.s)-r.i) {
		r.fail()
		return ""
	}
	s := r.s[r.i : r.i+int(n)]
	r.i += int(n)
	return s
}
