package processor

import (
	"encoding/binary"
	"errors"
	"hash/maphash"
	"slices"

	"github.com/segmentd/segmentd/membership"
)

// DefaultUserCacheBytes is the memory a processor's cache of users' states
// takes at most when its configuration does not say: 128 MiB, about 200,000
// users with the loadgen's profiles and eight memberships each.
const DefaultUserCacheBytes = 128 << 20

// stateCache remembers the state a processor last read or wrote for each of
// its users, so that a batch need not read them from Redis again: Kafka
// hands each user's events to one consumer, so the state it wrote last is
// almost always the state stored. Almost: another instance that took the
// partition over for a while, a backfill or a timer may have written the
// user since. Each of those moves the user's revision, and every write
// compares and sets the revision, so a stale entry costs a conflict and a
// read, never a wrong write. The writes that do not move the revision
// (static members through the API, a deleted segment's members) touch no
// dynamic segment the processor evaluates; only a profile deletion reads
// every membership, and a user with one is always read from Redis.
//
// States are held encoded in byte arenas indexed by a hash of the user, so
// that the garbage collector has no pointer to follow in them: a cache of
// Go values (maps, strings, slices) of 100,000 users tripled the heap the
// collector marks and, with it, the latency of the batches that met a
// collection. There are two generations: users go to the young one, and
// when its arena is full the old one is dropped and the young one takes its
// place; a user found in the old one moves to the young one. Each slot has
// room to spare, so that a user's next state, which differs by a few
// numbers, is written over the last. It is used by the write stage alone
// and is not safe for concurrent use.
type stateCache struct {
	genBytes   int // arena size of a generation; 0: the cache holds nothing
	young, old arena
	seed       maphash.Seed
	scratch    []byte
}

// arena is one generation: slots appended to buf, found by user hash.
type arena struct {
	at  map[uint64]uint32
	buf []byte
}

// A slot is its capacity and length (4 bytes each, little-endian), then
// the entry: org, user, revision, version, deleted, profile, segments and
// outbox, strings prefixed by their uvarint length.
const slotHeader = 8

// newStateCache returns a cache of at most bytes of arenas; 0 or less
// caches nothing.
func newStateCache(bytes int) *stateCache {
	return &stateCache{genBytes: max(0, bytes/2), seed: maphash.MakeSeed()}
}

func (c *stateCache) hash(ref membership.UserRef) uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	h.WriteString(ref.OrgID)
	h.WriteByte(0)
	h.WriteString(ref.UserID)
	return h.Sum64()
}

// get returns the user's state; the ids of org's segments in it are the
// definitions' own strings.
func (c *stateCache) get(ref membership.UserRef, org *OrgRules) (membership.UserState, bool) {
	h := c.hash(ref)
	if e, ok := c.young.entry(h, ref); ok {
		st, err := decodeEntry(e, org)
		return st, err == nil
	}
	e, ok := c.old.entry(h, ref)
	if !ok {
		return membership.UserState{}, false
	}
	st, err := decodeEntry(e, org)
	if err != nil {
		return st, false
	}
	delete(c.old.at, h)
	c.scratch = append(c.scratch[:0], e...)
	c.store(h, c.scratch)
	return st, true
}

func (c *stateCache) put(ref membership.UserRef, st membership.UserState) {
	if c.genBytes == 0 {
		return
	}
	c.scratch = appendEntry(c.scratch[:0], ref, st)
	h := c.hash(ref)
	delete(c.old.at, h)
	c.store(h, c.scratch)
}

// store writes entry e for hash h into the young generation: over the
// user's slot when it has room, else in a new slot.
func (c *stateCache) store(h uint64, e []byte) {
	if off, ok := c.young.at[h]; ok {
		if capacity := int(binary.LittleEndian.Uint32(c.young.buf[off:])); len(e) <= capacity {
			binary.LittleEndian.PutUint32(c.young.buf[off+4:], uint32(len(e)))
			copy(c.young.buf[int(off)+slotHeader:], e)
			return
		}
	}
	// A quarter more room, for the next states' growth.
	capacity := len(e) + len(e)/4 + 8
	need := slotHeader + capacity
	if need > c.genBytes {
		return // a state larger than a generation is not cached
	}
	if len(c.young.buf)+need > c.genBytes {
		c.old = c.young
		c.young = arena{}
		delete(c.old.at, h) // its slot there is older than e
	}
	if c.young.at == nil {
		c.young.at = map[uint64]uint32{}
	}
	if len(c.young.buf)+need > cap(c.young.buf) {
		// Grow by doubling up to the generation's size, not past it.
		grown := make([]byte, len(c.young.buf), min(c.genBytes, max(2*cap(c.young.buf), len(c.young.buf)+need, 1<<16)))
		copy(grown, c.young.buf)
		c.young.buf = grown
	}
	off := len(c.young.buf)
	c.young.buf = c.young.buf[:off+need]
	binary.LittleEndian.PutUint32(c.young.buf[off:], uint32(capacity))
	binary.LittleEndian.PutUint32(c.young.buf[off+4:], uint32(len(e)))
	copy(c.young.buf[off+slotHeader:], e)
	c.young.at[h] = uint32(off)
}

func (c *stateCache) drop(ref membership.UserRef) {
	h := c.hash(ref)
	delete(c.young.at, h)
	delete(c.old.at, h)
}

// len is the number of users held.
func (c *stateCache) len() int { return len(c.young.at) + len(c.old.at) }

// bytes is the size of the arenas.
func (c *stateCache) bytes() int { return cap(c.young.buf) + cap(c.old.buf) }

// entry returns the entry of the slot for h when it holds ref.
func (a *arena) entry(h uint64, ref membership.UserRef) ([]byte, bool) {
	off, ok := a.at[h]
	if !ok {
		return nil, false
	}
	n := int(binary.LittleEndian.Uint32(a.buf[off+4:]))
	e := a.buf[int(off)+slotHeader : int(off)+slotHeader+n]
	r := entryReader{b: e}
	if string(r.bytes()) != ref.OrgID || string(r.bytes()) != ref.UserID || r.err != nil {
		return nil, false // another user with the same hash
	}
	return e, true
}

func appendEntry(dst []byte, ref membership.UserRef, st membership.UserState) []byte {
	dst = appendBytes(dst, ref.OrgID)
	dst = appendBytes(dst, ref.UserID)
	dst = binary.AppendVarint(dst, st.Rev)
	dst = binary.AppendVarint(dst, st.Version)
	deleted := byte(0)
	if st.Deleted {
		deleted = 1
	}
	dst = append(dst, deleted)
	dst = appendBytes(dst, st.Profile)
	dst = binary.AppendUvarint(dst, uint64(len(st.Segments)))
	for _, s := range st.Segments {
		dst = appendBytes(dst, s)
	}
	// The outbox goes last, in its stored form, to the end of the entry.
	return membership.AppendOutbox(dst, st.Outbox)
}

func appendBytes(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

var errEntry = errors.New("corrupt cache entry")

func decodeEntry(e []byte, org *OrgRules) (membership.UserState, error) {
	r := entryReader{b: e}
	r.bytes() // org
	r.bytes() // user
	st := membership.UserState{Rev: r.varint(), Version: r.varint(), Deleted: r.byte() == 1}
	st.Profile = string(r.bytes())
	if n := r.uvarint(); n > 0 && n <= uint64(len(e)) {
		st.Segments = make([]string, n)
		for i := range st.Segments {
			st.Segments[i] = segmentID(org, r.bytes())
		}
	}
	if r.err != nil {
		return st, r.err
	}
	if r.i < len(e) {
		es, err := membership.DecodeOutbox(string(e[r.i:]))
		if err != nil {
			return st, err
		}
		st.Outbox = es
	}
	return st, nil
}

// segmentID returns id as a string, the definitions' own when org has it.
func segmentID(org *OrgRules, id []byte) string {
	if org != nil {
		if n, ok := org.Index.Number(string(id)); ok {
			return org.ByNumber[n].Def.ID
		}
	}
	return string(id)
}

type entryReader struct {
	b   []byte
	i   int
	err error
}

func (r *entryReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b[r.i:])
	if n <= 0 {
		r.err, r.i = errEntry, len(r.b)
		return 0
	}
	r.i += n
	return v
}

func (r *entryReader) varint() int64 {
	v, n := binary.Varint(r.b[r.i:])
	if n <= 0 {
		r.err, r.i = errEntry, len(r.b)
		return 0
	}
	r.i += n
	return v
}

func (r *entryReader) byte() byte {
	if r.i >= len(r.b) {
		r.err = errEntry
		return 0
	}
	r.i++
	return r.b[r.i-1]
}

func (r *entryReader) bytes() []byte {
	n := r.uvarint()
	if n > uint64(len(r.b)-r.i) {
		r.err, r.i = errEntry, len(r.b)
		return nil
	}
	s := r.b[r.i : r.i+int(n)]
	r.i += int(n)
	return s
}

// writtenState is the state a successful write w leaves, from the state st
// it was computed from.
func writtenState(st membership.UserState, w *membership.UserWrite) membership.UserState {
	next := membership.UserState{Rev: w.ExpectRev + 1, Version: w.Version, Outbox: w.Outbox}
	if w.Profile == nil {
		// A deletion empties the user's segment set and keeps a tombstone.
		next.Deleted = true
		return next
	}
	next.Profile = string(w.Profile)
	segs := slices.DeleteFunc(slices.Clone(st.Segments), func(s string) bool { return slices.Contains(w.Remove, s) })
	next.Segments = append(segs, w.Add...)
	return next
}
