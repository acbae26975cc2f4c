package segment

import (
	"maps"
	"slices"
	"strings"
)

// Profile is a user's profile as decoded JSON, with encoding/json's default
// types: numbers are float64, arrays []any and objects map[string]any.
type Profile map[string]any

// ChangedPaths lists, sorted, the paths whose values differ between old and
// new. It compares top-level keys and, where a key holds an object on both
// sides, descends into it down to the differing keys, so a change of
// profile["customFields"]["vip"] is reported as "customFields.vip". An absent
// key and a null one are the same (both are missing to a criterion). Either
// profile may be nil.
func ChangedPaths(old, new Profile) []string {
	return diffObjects(nil, "", old, new)
}

// diffObjects appends the paths, under prefix, whose values differ between
// objects a and b.
func diffObjects(dst []string, prefix string, a, b map[string]any) []string {
	start := len(dst)
	for k, av := range a {
		dst = diffValues(dst, prefix+k, av, b[k])
	}
	for k, bv := range b {
		if _, seen := a[k]; !seen {
			dst = diffValues(dst, prefix+k, nil, bv)
		}
	}
	slices.Sort(dst[start:])
	return dst
}

func diffValues(dst []string, path string, a, b any) []string {
	am, aok := asObject(a)
	bm, bok := asObject(b)
	if aok && bok {
		return diffObjects(dst, path+".", am, bm)
	}
	if !jsonEqual(a, b) {
		dst = append(dst, path)
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
func ApplyChanges(old Profile, changes map[string]any) (Profile, []string, error) {
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

	root := make(map[string]any, len(old)+len(changes))
	maps.Copy(root, old)
	// owned holds the objects, by path, already copied by this call, which it
	// may therefore modify in place.
	owned := map[string]map[string]any{"": root}
	for _, p := range paths {
		if msg := set(root, owned, p, changes[p]); msg != "" {
			errs = append(errs, FieldError{p, msg})
		}
	}
	if errs != nil {
		return nil, nil, &ValidationError{Code: CodeValidationFailed, Errors: errs}
	}

	// Only the top-level keys the patch touched can differ; diffing them
	// whole lists the paths exactly as ChangedPaths would.
	var changed []string
	seen := make(map[string]bool, len(paths))
	for _, p := range paths {
		top, _, _ := strings.Cut(p, ".")
		if !seen[top] {
			seen[top] = true
			changed = diffValues(changed, top, old[top], root[top])
		}
	}
	slices.Sort(changed)
	return Profile(root), changed, nil
}

// set stores v (or removes the key when v is nil) at path in root, copying
// each object on the way that owned does not hold yet.
func set(root map[string]any, owned map[string]map[string]any, path string, v any) string {
	keys := strings.Split(path, ".")
	obj := root
	for i, k := range keys[:len(keys)-1] {
		prefix := strings.Join(keys[:i+1], ".")
		if next, ok := owned[prefix]; ok {
			obj = next
			continue
		}
		var next map[string]any
		switch cur := obj[k].(type) {
		case nil:
			if v == nil {
				return "" // nothing to remove
			}
			next = make(map[string]any)
		case map[string]any:
			next = maps.Clone(cur)
		case Profile:
			next = maps.Clone(map[string]any(cur))
		default:
			return "path crosses " + strings.Join(keys[:i+1], ".") + ", which is not an object"
		}
		obj[k] = next
		owned[prefix] = next
		obj = next
	}
	last := keys[len(keys)-1]
	if v == nil {
		delete(obj, last)
	} else {
		obj[last] = v
	}
	// The value now at path comes from the caller, so objects copied below it
	// are stale; a sorted patch never has any, but stay safe.
	for p := range owned {
		if strings.HasPrefix(p, path+".") {
			delete(owned, p)
		}
	}
	return ""
}

// lookupPath is lookup for a dotted path given as a string.
func lookupPath(m map[string]any, path string) any {
	return lookup(m, strings.Split(path, "."))
}
