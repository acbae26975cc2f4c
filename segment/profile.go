package segment

import (
	"encoding/json"
	"maps"
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
	var dst []string
	for i, k := range knownFields {
		dst = diffValues(dst, "", k, old.field(k, i), new.field(k, i))
	}
	var a, b map[string]any
	if old != nil {
		a = old.other
	}
	if new != nil {
		b = new.other
	}
	dst = diffObjects(dst, "", a, b)
	slices.Sort(dst)
	return dst
}

// diffObjects appends the paths, under prefix, whose values differ between
// objects a and b.
func diffObjects(dst []string, prefix string, a, b map[string]any) []string {
	start := len(dst)
	for k, av := range a {
		dst = diffValues(dst, prefix, k, av, b[k])
	}
	for k, bv := range b {
		if _, seen := a[k]; !seen {
			dst = diffValues(dst, prefix, k, nil, bv)
		}
	}
	slices.Sort(dst[start:])
	return dst
}

// diffValues appends prefix+k, or the paths below it, when a and b differ.
// The path is built only for a difference or an object on both sides: most
// keys of an object are unchanged.
func diffValues(dst []string, prefix, k string, a, b any) []string {
	am, aok := asObject(a)
	bm, bok := asObject(b)
	if aok && bok {
		return diffObjects(dst, prefix+k+".", am, bm)
	}
	if !jsonEqual(a, b) {
		dst = append(dst, prefix+k)
	}
	return dst
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
	// owned holds the objects, by path, already copied by this call, which it
	// may therefore modify in place; made for the first nested path.
	var owned map[string]map[string]any
	for _, p := range paths {
		if msg := set(root, &owned, p, changes[p]); msg != "" {
			errs = append(errs, FieldError{p, msg})
		}
	}
	if errs != nil {
		return nil, nil, &ValidationError{Code: CodeValidationFailed, Errors: errs}
	}

	// Only the top-level fields the patch touched can differ; diffing them
	// whole lists the paths exactly as ChangedPaths would. A patch of a
	// few paths looks its tops up in a slice; a larger one in a set, so
	// that a patch of many fields costs in proportion to its paths.
	var changed []string
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
		} else {
			tops = append(tops, top)
		}
		changed = diffValues(changed, "", top, old.Get(top), root.Get(top))
	}
	slices.Sort(changed)
	return root, changed, nil
}

// smallPatch is the most paths whose top-level fields ApplyChanges looks up
// in a slice rather than a set.
const smallPatch = 16

// set stores v (or removes the field when v is nil) at path in root, copying
// each object on the way that *owned does not hold yet. Paths come in
// sorted order, so no path below this one has been set yet: *owned holds
// no object under it to forget (looking for one would cost the whole of
// *owned for each path).
func set(root *Profile, owned *map[string]map[string]any, path string, v any) string {
	dot := strings.IndexByte(path, '.')
	if dot < 0 {
		root.Set(path, v)
		return ""
	}
	if *owned == nil {
		*owned = make(map[string]map[string]any)
	}
	// Walk the objects on the way: prefix is path[:end], k its last key.
	var obj map[string]any
	start, end := 0, dot
	for {
		prefix, k := path[:end], path[start:end]
		next, ok := (*owned)[prefix]
		if !ok {
			var cur any
			if obj == nil {
				cur = root.Get(k)
			} else {
				cur = obj[k]
			}
			switch cur := cur.(type) {
			case nil:
				if v == nil {
					return "" // nothing to remove
				}
				next = make(map[string]any)
			case map[string]any:
				next = maps.Clone(cur)
			default:
				if v == nil {
					return "" // nothing below a value that is no object to remove
				}
				return "path crosses " + prefix + ", which is not an object"
			}
			if obj == nil {
				root.Set(k, next)
			} else {
				obj[k] = next
			}
			(*owned)[prefix] = next
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

// lookupPath is lookup for a dotted path given as a string.
func lookupPath(p *Profile, path string) any {
	return lookup(p, strings.Split(path, "."))
}
