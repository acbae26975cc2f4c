package segment

import (
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"strings"
)

// Profile is a user's profile: its top-level fields, each holding a value of
// encoding/json's default types (numbers float64, arrays []any, objects
// map[string]any). A field that is absent and one that is JSON null are the
// same to a criterion, so a Profile holds no nulls at its top level.
//
// The top-level fields the contract names (userId, tier, points, xp, coins,
// badges, email, createdAt, updatedAt, customFields) sit in fixed slots, so
// that a compiled rule reads them without hashing their names; any other
// field is kept in a map. A nil *Profile is an empty profile to every
// method and function of this package. A Profile is not safe for concurrent
// modification; the functions of this package never modify one they are
// given.
type Profile struct {
	known [numKnown]any
	other map[string]any
}

// knownFields names the fixed slots of a Profile.
var knownFields = [...]string{"userId", "tier", "points", "xp", "coins", "badges", "email", "createdAt", "updatedAt", "customFields"}

const numKnown = len(knownFields)

// knownSlot returns the slot of a contract field, or -1 for any other key.
func knownSlot(k string) int {
	switch k {
	case "userId":
		return 0
	case "tier":
		return 1
	case "points":
		return 2
	case "xp":
		return 3
	case "coins":
		return 4
	case "badges":
		return 5
	case "email":
		return 6
	case "createdAt":
		return 7
	case "updatedAt":
		return 8
	case "customFields":
		return 9
	}
	return -1
}

// NewProfile returns the profile holding the fields of m, without its null
// ones. The profile shares m's values (not m itself).
func NewProfile(m map[string]any) *Profile {
	p := &Profile{}
	for k, v := range m {
		p.Set(k, v)
	}
	return p
}

// Get returns the value of top-level field k, nil when it is absent.
func (p *Profile) Get(k string) any {
	return p.field(k, knownSlot(k))
}

// field is Get for a key whose knownSlot is already known.
func (p *Profile) field(k string, slot int) any {
	if p == nil {
		return nil
	}
	if slot >= 0 {
		return p.known[slot]
	}
	return p.other[k]
}

// Set sets top-level field k to v; a nil v removes it.
func (p *Profile) Set(k string, v any) {
	if i := knownSlot(k); i >= 0 {
		p.known[i] = v
		return
	}
	if v == nil {
		delete(p.other, k)
		return
	}
	if p.other == nil {
		p.other = make(map[string]any)
	}
	p.other[k] = v
}

// Len returns how many top-level fields p holds.
func (p *Profile) Len() int {
	if p == nil {
		return 0
	}
	n := len(p.other)
	for _, v := range p.known {
		if v != nil {
			n++
		}
	}
	return n
}

// All yields every top-level field of p and its value: the contract's
// fields in a fixed order, then the others in no particular order.
func (p *Profile) All() func(yield func(string, any) bool) {
	return func(yield func(string, any) bool) {
		if p == nil {
			return
		}
		for i, v := range p.known {
			if v != nil && !yield(knownFields[i], v) {
				return
			}
		}
		for k, v := range p.other {
			if !yield(k, v) {
				return
			}
		}
	}
}

// Map returns p's fields as a new map; it shares p's values.
func (p *Profile) Map() map[string]any {
	m := make(map[string]any, p.Len())
	for k, v := range p.All() {
		m[k] = v
	}
	return m
}

// Clone returns a copy of p that shares p's values: setting a field of one
// leaves the other as it was. The clone of nil is an empty profile.
func (p *Profile) Clone() *Profile {
	if p == nil {
		return &Profile{}
	}
	c := &Profile{known: p.known}
	if len(p.other) > 0 {
		c.other = maps.Clone(p.other)
	}
	return c
}

// MarshalJSON encodes p as a JSON object.
func (p *Profile) MarshalJSON() ([]byte, error) {
	return json.Marshal(p.Map())
}

// UnmarshalJSON decodes a JSON object into p, replacing what p held. Null
// fields are left out.
func (p *Profile) UnmarshalJSON(b []byte) error {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if m == nil {
		return nil // null: left as it was, as encoding/json does
	}
	*p = *NewProfile(m)
	return nil
}

// ChangedPaths lists, sorted, the paths whose values differ between old and
// new. It compares top-level fields and, where a field holds an object on
// both sides, descends into it down to the differing keys, so a new value of
// the vip key of customFields is reported as "customFields.vip". An absent
// key and a null one are the same (both are missing to a criterion). Either
// profile may be nil.
func ChangedPaths(old, new *Profile) []string {
	var tops []string
	for i, k := range knownFields {
		if old.field(k, i) != nil || new.field(k, i) != nil {
			tops = append(tops, k)
		}
	}
	n := len(tops)
	var a, b map[string]any
	if old != nil {
		a = old.other
	}
	if new != nil {
		b = new.other
	}
	for k := range a {
		tops = append(tops, k)
	}
	for k := range b {
		if _, seen := a[k]; !seen {
			tops = append(tops, k)
		}
	}
	slices.Sort(tops[n:])
	var pb [128]byte // most paths fit: no allocation for the buffer
	d := differ{budget: maxChangedPathBytes, path: pb[:0]}
	for _, k := range tops {
		d.top(k, old.Get(k), new.Get(k))
	}
	slices.Sort(d.dst)
	return d.dst
}

// Bounds of the paths ChangedPaths and ApplyChanges list below the
// top-level fields: at most maxChangedPathDepth keys deep and
// maxChangedPathBytes in all. A field whose differences go deeper, or
// once that many bytes are listed, is listed as its top-level name alone,
// which stands for every path below it (to the field index, a change of
// "customFields" affects the readers of every "customFields.…" field):
// listing them all would cost the square of the profile's size for a
// deeply nested profile (each path repeats every key above it), and so
// would the field index's walk over each path's prefixes.
const (
	maxChangedPathDepth = 64
	maxChangedPathBytes = 64 << 10
)

// differ lists the paths whose values differ between two profiles, within
// a budget of path bytes. path is the path of the values being compared,
// built in one buffer: a string is made only for a difference listed.
type differ struct {
	dst    []string
	path   []byte
	depth  int
	budget int
	over   bool
}

// top appends the paths below top-level field k whose values differ
// between a and b, or k alone when they would go past the bounds.
func (d *differ) top(k string, a, b any) {
	start, budget := len(d.dst), d.budget
	d.path, d.depth, d.over = append(d.path[:0], k...), 0, false
	d.values(a, b)
	if d.over {
		// The paths dropped give their bytes back: what the field spent
		// before it went over depends on the order its keys came in.
		d.dst, d.budget = d.dst[:start], budget
		if !jsonEqual(a, b) {
			d.dst = append(d.dst, k)
			d.budget -= len(k)
		}
	}
}

// values appends d.path, or the paths below it, when a and b differ.
// Most keys of an object are unchanged: only the objects on both sides
// are descended into.
func (d *differ) values(a, b any) {
	am, aok := asObject(a)
	bm, bok := asObject(b)
	if aok && bok {
		if d.depth++; d.depth > maxChangedPathDepth {
			d.over = true
			return
		}
		n := len(d.path)
		for k, av := range am {
			d.path = append(append(d.path[:n], '.'), k...)
			if d.values(av, bm[k]); d.over {
				return
			}
		}
		for k, bv := range bm {
			if _, seen := am[k]; !seen {
				d.path = append(append(d.path[:n], '.'), k...)
				if d.values(nil, bv); d.over {
					return
				}
			}
		}
		d.path = d.path[:n]
		d.depth--
		return
	}
	if !jsonEqual(a, b) {
		if d.budget -= len(d.path); d.budget < 0 {
			d.over = true
			return
		}
		d.dst = append(d.dst, string(d.path))
	}
}

// ApplyChanges applies a patch to old and returns the resulting profile with
// the paths that changed, as ChangedPaths(old, result) would list them.
//
// Each key of changes is a dotted path (for example "customFields.vip.level")
// and its value the field's new value; a nil value removes the field.
// Intermediate objects are created as needed, and a path that is also the
// prefix of another in the same patch is applied first. old is not modified:
// the result shares every object the patch does not touch and copies those on
// the paths it does.
//
// The error, when not nil, is a *ValidationError listing each malformed path
// (an empty segment, as in "a..b") and each path that crosses a value that is
// not an object (such as "points.x" when points is a number).
func ApplyChanges(old *Profile, changes map[string]any) (*Profile, []string, error) {
	paths := make([]string, 0, len(changes))
	for p := range changes {
		paths = append(paths, p)
	}
	// Sorting puts "a" before "a.b", so a nested change lands in an object
	// the patch has just set rather than being overwritten by it.
	slices.Sort(paths)

	var errs []FieldError
	for _, p := range paths {
		if msg := checkPath(p); msg != "" {
			errs = append(errs, FieldError{p, msg})
		}
	}
	if errs != nil {
		return nil, nil, &ValidationError{Code: CodeValidationFailed, Errors: errs}
	}

	root := old.Clone()
	// owned holds the objects already copied (or made) by this call, which
	// it may therefore modify in place; made for the first nested path.
	var owned map[uintptr]struct{}
	for _, p := range paths {
		if msg := set(root, &owned, p, changes[p]); msg != "" {
			errs = append(errs, FieldError{p, msg})
		}
	}
	if errs != nil {
		return nil, nil, &ValidationError{Code: CodeValidationFailed, Errors: errs}
	}

	// Only the top-level fields the patch touched can differ; diffing them
	// whole, in ChangedPaths' order, lists the paths exactly as
	// ChangedPaths would. A patch of a few paths looks its tops up in a
	// slice; a larger one in a set, so that a patch of many fields costs
	// in proportion to its paths.
	var tops []string
	var topSet map[string]bool
	if len(paths) > smallPatch {
		topSet = make(map[string]bool, len(paths))
	}
	for _, p := range paths {
		top, _, _ := strings.Cut(p, ".")
		if topSet != nil {
			if topSet[top] {
				continue
			}
			topSet[top] = true
		} else if slices.Contains(tops, top) {
			continue
		}
		tops = append(tops, top)
	}
	slices.SortFunc(tops, func(a, b string) int {
		sa, sb := knownSlot(a), knownSlot(b)
		switch {
		case sa >= 0 && sb >= 0:
			return sa - sb
		case sa >= 0:
			return -1
		case sb >= 0:
			return 1
		}
		return strings.Compare(a, b)
	})
	var pb [128]byte
	d := differ{budget: maxChangedPathBytes, path: pb[:0], dst: make([]string, 0, len(paths))}
	for _, top := range tops {
		d.top(top, old.Get(top), root.Get(top))
	}
	slices.Sort(d.dst)
	return root, d.dst, nil
}

// smallPatch is the most paths whose top-level fields ApplyChanges looks up
// in a slice rather than a set.
const smallPatch = 16

// set stores v (or removes the field when v is nil) at path in root, copying
// each object on the way that *owned does not hold yet. Objects are known
// by identity, not by their path: looking a path's every prefix up would
// hash the path once for each of its keys, the square of its length for a
// deep one. Paths come in sorted order, so no later path replaces an
// object on this one's way (a path sorts after its prefixes).
func set(root *Profile, owned *map[uintptr]struct{}, path string, v any) string {
	dot := strings.IndexByte(path, '.')
	if dot < 0 {
		root.Set(path, v)
		return ""
	}
	if *owned == nil {
		*owned = make(map[uintptr]struct{})
	}
	// Walk the objects on the way: k is the key path[start:end].
	var obj map[string]any
	start, end := 0, dot
	for {
		k := path[start:end]
		var cur any
		if obj == nil {
			cur = root.Get(k)
		} else {
			cur = obj[k]
		}
		var next map[string]any
		switch cur := cur.(type) {
		case nil:
			if v == nil {
				return "" // nothing to remove
			}
		case map[string]any:
			if _, ok := (*owned)[objectID(cur)]; ok {
				next = cur
			}
		default:
			if v == nil {
				return "" // nothing below a value that is no object to remove
			}
			return "path crosses " + path[:end] + ", which is not an object"
		}
		if next == nil {
			if m, ok := cur.(map[string]any); ok && m != nil {
				next = maps.Clone(m)
			} else {
				next = make(map[string]any)
			}
			if obj == nil {
				root.Set(k, next)
			} else {
				obj[k] = next
			}
			(*owned)[objectID(next)] = struct{}{}
		}
		obj = next
		start = end + 1
		i := strings.IndexByte(path[start:], '.')
		if i < 0 {
			break
		}
		end = start + i
	}
	last := path[start:]
	if v == nil {
		delete(obj, last)
	} else {
		obj[last] = v
	}
	return ""
}

// objectID returns what identifies object m: its map's address, whatever
// variable holds it (Go's collector does not move maps, and root keeps
// every object of a call alive while the call uses their addresses).
func objectID(m map[string]any) uintptr { return reflect.ValueOf(m).Pointer() }

// lookupPath is lookup for a dotted path given as a string.
func lookupPath(p *Profile, path string) any {
	return lookup(p, strings.Split(path, "."))
}
