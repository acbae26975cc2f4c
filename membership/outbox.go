package membership

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
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
	r := outboxReader{s: s}
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

type outboxReader struct {
	s   string
	i   int
	err error
}

var errTruncated = errors.New("truncated")

func (r *outboxReader) entry() (OutboxEntry, error) {
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
		c := OutboxChange{SegmentID: r.str()}
		if r.i >= len(r.s) {
			r.fail()
			break
		}
		c.Entered = r.s[r.i] == 1
		r.i++
		e.Changes = append(e.Changes, c)
	}
	return e, r.err
}

func (r *outboxReader) fail() {
	if r.err == nil {
		r.err = errTruncated
	}
	r.i = len(r.s)
}

func (r *outboxReader) uvarint() uint64 {
	x, n := binary.Uvarint([]byte(r.s[r.i:min(len(r.s), r.i+binary.MaxVarintLen64)]))
	if n <= 0 {
		r.fail()
		return 0
	}
	r.i += n
	return x
}

func (r *outboxReader) varint() int64 {
	u := r.uvarint()
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x
}

func (r *outboxReader) str() string {
	n := r.uvarint()
	if n > uint64(len(r.s)-r.i) {
		r.fail()
		return ""
	}
	s := r.s[r.i : r.i+int(n)]
	r.i += int(n)
	return s
}
