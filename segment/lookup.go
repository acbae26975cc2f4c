package segment

import (
	"slices"
	"time"
)

// FieldSlots numbers the field paths that a set of rules reads, so that the
// rules evaluated one after another against the same profile look each field
// up once (see [Lookup]). Hundreds of segments of an organisation read a
// handful of distinct fields; without it, each of them hashes the same keys
// again. Build it once, binding every rule, then use it from any number of
// goroutines.
type FieldSlots struct {
	num map[string]int32
	// at holds each slot's path, split as a cond splits it.
	at []slotPath
}

type slotPath struct {
	key  string
	top  int // key's slot in a Profile
	rest []string
}

// NewFieldSlots returns an empty numbering.
func NewFieldSlots() *FieldSlots { return &FieldSlots{num: map[string]int32{}} }

// Bind returns a copy of r whose criteria read their fields through the
// slots of s, numbering the paths s has not seen. r itself is unchanged.
// Bind must not run concurrently with itself or with NewLookup.
func (s *FieldSlots) Bind(r *Rule) *Rule {
	b := *r
	b.conds = slices.Clone(r.conds) // include and exclude, which Explain reads, stay shared
	for i := range b.conds {
		c := &b.conds[i]
		slot, ok := s.num[c.field]
		if !ok {
			slot = int32(len(s.num))
			s.num[c.field] = slot
			s.at = append(s.at, slotPath{c.key, int(c.top), c.rest})
		}
		c.slot = slot
	}
	return &b
}

// Len returns how many distinct paths s numbers.
func (s *FieldSlots) Len() int { return len(s.num) }

// NewLookup returns a Lookup sized for the paths numbered so far.
func (s *FieldSlots) NewLookup() *Lookup {
	return &Lookup{seen: make([]uint32, len(s.num)), vals: make([]any, len(s.num)), at: s.at[:len(s.num):len(s.num)], gen: 1}
}

// Lookup memoises the field values of one profile for the rules bound to
// one FieldSlots. It is not safe for concurrent use; give each goroutine
// its own.
type Lookup struct {
	p *Profile
	// gen marks the profile in use: a slot holds its value when seen[slot]
	// equals gen, so that Reset need not clear vals.
	gen  uint32
	seen []uint32
	vals []any
	at   []slotPath
}

// Reset points l at profile p and forgets every value looked up before.
func (l *Lookup) Reset(p *Profile) {
	l.p = p
	l.gen++
	if l.gen == 0 {
		clear(l.seen)
		l.gen = 1
	}
}

// value returns c's field value in l's profile, from the memo when present.
// A cond of an unbound rule, or of a path numbered after l was made, is
// looked up directly.
func (l *Lookup) value(c *cond) any {
	s := int(c.slot)
	if s < 0 || s >= len(l.vals) {
		return c.value(l.p)
	}
	if l.seen[s] == l.gen {
		return l.vals[s]
	}
	v := c.value(l.p)
	l.vals[s], l.seen[s] = v, l.gen
	return v
}

// Guard is an include criterion "field equals value", with a string, number
// or boolean value, of a rule bound to a FieldSlots: a profile whose field
// does not hold the value is out of the segment, whatever else it holds.
// Many segments of an organisation often share a guard's field with
// different values ("cohort equals 7"); checking guards first spares
// evaluating the segments a profile cannot be in.
type Guard struct {
	// Slot numbers the guard's field in the rule's FieldSlots.
	Slot int32
	// Key is the value, a string, a float64 or a bool; see GuardKey.
	Key any
}

// Guard returns the rule's first guard in the order Match tests its
// criteria; false when it has none or is not bound to a FieldSlots.
func (r *Rule) Guard() (Guard, bool) {
	for i := range r.conds {
		c := &r.conds[i]
		if c.op != opEquals || c.neg || c.failIf || c.slot < 0 {
			continue
		}
		switch c.kind {
		case kindString:
			return Guard{c.slot, c.str}, true
		case kindNumber:
			return Guard{c.slot, c.num}, true
		case kindBool:
			return Guard{c.slot, c.b}, true
		}
	}
	return Guard{}, false
}

// GuardKey returns the key of the profile's value at a guard's slot: equal
// (==) to the guard's Key exactly when the criterion holds, and false when
// the value meets no guard (missing, null, an array or an object). The
// slot must be numbered before l was made, as the slots of rules bound
// before NewLookup are.
func (l *Lookup) GuardKey(slot int32) (any, bool) {
	s := int(slot)
	if s < 0 || s >= len(l.vals) {
		return nil, false
	}
	v := l.vals[s]
	if l.seen[s] != l.gen {
		v = l.p.field(l.at[s].key, l.at[s].top)
		if l.at[s].rest != nil {
			v = descend(v, l.at[s].rest)
		}
		l.vals[s], l.seen[s] = v, l.gen
	}
	switch v.(type) {
	case string, bool, float64: // as they are, not boxed again
		return v, true
	}
	if f, ok := toFloat(v); ok {
		return f, true
	}
	return nil, false
}

// MatchLookup is Match against the profile l was last Reset to, reading its
// fields through l. It gives the same answer as Match for any rule, bound to
// l's FieldSlots or not, and does not allocate.
func (r *Rule) MatchLookup(l *Lookup, now time.Time) bool {
	var n instant
	if r.relative {
		n = instantOf(now)
	}
	for i := range r.conds {
		c := &r.conds[i]
		if c.check(c, l.value(c), n) == c.failIf {
			return false
		}
	}
	return true
}
