package processor

import (
	"slices"

	"github.com/segmentd/segmentd/membership"
)

// DefaultUserCacheSize is how many users' states a processor keeps in
// memory when its configuration does not say.
const DefaultUserCacheSize = 200000

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
// It holds two generations: entries go to the young one, and when it is
// full the old one is dropped and the young one takes its place, so that
// at most size entries are held and recently used ones survive, without a
// list to maintain per entry. It is used by the write stage alone and is
// not safe for concurrent use.
type stateCache struct {
	size       int
	young, old map[membership.UserRef]membership.UserState
}

// newStateCache returns a cache of size entries; size 0 caches nothing.
func newStateCache(size int) *stateCache {
	return &stateCache{size: size}
}

func (c *stateCache) get(ref membership.UserRef) (membership.UserState, bool) {
	if st, ok := c.young[ref]; ok {
		return st, true
	}
	st, ok := c.old[ref]
	if ok {
		delete(c.old, ref)
		c.put(ref, st)
	}
	return st, ok
}

func (c *stateCache) put(ref membership.UserRef, st membership.UserState) {
	if c.size <= 0 {
		return
	}
	if c.young == nil {
		c.young = make(map[membership.UserRef]membership.UserState, min(c.size/2+1, 4096))
	}
	if _, ok := c.young[ref]; !ok && len(c.young) >= max(1, c.size/2) {
		c.old = c.young
		if c.size < 2 {
			c.old = nil // no room for two generations
		}
		c.young = make(map[membership.UserRef]membership.UserState, len(c.young))
	}
	delete(c.old, ref)
	c.young[ref] = st
}

func (c *stateCache) drop(ref membership.UserRef) {
	delete(c.young, ref)
	delete(c.old, ref)
}

// len is the number of users held.
func (c *stateCache) len() int { return len(c.young) + len(c.old) }

// written is the state a successful write w leaves, from the state st it
// was computed from.
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
