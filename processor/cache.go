package processor

import (
	"bytes"
	"encoding/binary"
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

// arena is one generation: slots appended to buf, found by user hash. The
// offsets are ints, not uint32s: a generation may be larger than 4 GiB
// (SEGMENTD_USER_CACHE_MB goes up to 1 TiB), and a map slot of a uint64
// key takes 16 bytes either way.
type arena struct {
	at  map[uint64]int
	buf []byte
}

// A slot is its capacity and length (4 bytes each, little-endian), then
// the entry: the user's identity, then its state as membership.AppendState
// writes it.
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

// get returns the user's state; one found in the old generation moves to
// the young one.
func (c *stateCache) get(ref membership.UserRef) (membership.UserState, bool) {
	if c.genBytes == 0 {
		return membership.UserState{}, false
	}
	h, id := c.hash(ref), c.identity(ref)
	e, young := c.young.entry(h, id)
	if !young {
		var ok bool
		if e, ok = c.old.entry(h, id); !ok {
			return membership.UserState{}, false
		}
	}
	st, err := membership.DecodeState(string(e[len(id):]))
	if err != nil {
		return st, false
	}
	if !young {
		delete(c.old.at, h)
		c.scratch = append(c.scratch[:0], e...)
		c.store(h, c.scratch)
	}
	return st, true
}

func (c *stateCache) put(ref membership.UserRef, st membership.UserState) {
	if c.genBytes == 0 {
		return
	}
	c.scratch = membership.AppendState(c.identity(ref), st)
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
			copy(c.young.buf[off+slotHeader:], e)
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
		c.young.at = map[uint64]int{}
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
	c.young.at[h] = off
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

// identity is the start of every entry of ref: its ids, each prefixed by
// its length, so that users whose hashes meet are told apart. It is built in
// the cache's scratch buffer, which put then extends into the entry.
func (c *stateCache) identity(ref membership.UserRef) []byte {
	b := binary.AppendUvarint(c.scratch[:0], uint64(len(ref.OrgID)))
	b = append(b, ref.OrgID...)
	b = binary.AppendUvarint(b, uint64(len(ref.UserID)))
	c.scratch = append(b, ref.UserID...)
	return c.scratch
}

// entry returns the entry of the slot for h when it starts with id.
func (a *arena) entry(h uint64, id []byte) ([]byte, bool) {
	off, ok := a.at[h]
	if !ok {
		return nil, false
	}
	n := int(binary.LittleEndian.Uint32(a.buf[off+4:]))
	e := a.buf[off+slotHeader : off+slotHeader+n]
	if !bytes.HasPrefix(e, id) {
		return nil, false // another user with the same hash
	}
	return e, true
}

// writtenState is the state a successful write w leaves, from the state st
// it was computed from.
func writtenState(st membership.UserState, w *membership.UserWrite) membership.UserState {
	next := membership.UserState{Rev: w.ExpectRev + 1, Version: w.Version, Outbox: w.Outbox, Applied: st.Applied}
	if w.Applied != "" {
		next.Applied = w.Applied
	}
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
