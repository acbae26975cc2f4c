package segment

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestChangedPaths(t *testing.T) {
	vip := func(level string) map[string]any {
		return map[string]any{"vip": map[string]any{"level": level, "since": "2023"}, "region": "eu"}
	}
	tests := map[string]struct {
		old, new pmap
		want     []string
	}{
		"both nil":            {nil, nil, nil},
		"equal":               {pmap{"a": 1.0, "b": []any{"x"}}, pmap{"a": 1.0, "b": []any{"x"}}, nil},
		"from nil":            {nil, pmap{"a": 1.0, "b": 2.0}, []string{"a", "b"}},
		"to nil":              {pmap{"a": 1.0}, nil, []string{"a"}},
		"scalar change":       {pmap{"a": 1.0, "b": "x"}, pmap{"a": 2.0, "b": "x"}, []string{"a"}},
		"type change":         {pmap{"a": 1.0}, pmap{"a": "1"}, []string{"a"}},
		"number kinds equal":  {pmap{"a": 1.0}, pmap{"a": 1}, nil},
		"added":               {pmap{"a": 1.0}, pmap{"a": 1.0, "b": false}, []string{"b"}},
		"removed":             {pmap{"a": 1.0, "b": false}, pmap{"a": 1.0}, []string{"b"}},
		"null is absent":      {pmap{"a": 1.0, "b": nil}, pmap{"a": 1.0}, nil},
		"null to value":       {pmap{"b": nil}, pmap{"b": 0.0}, []string{"b"}},
		"array element":       {pmap{"a": []any{"x", "y"}}, pmap{"a": []any{"x", "z"}}, []string{"a"}},
		"array order":         {pmap{"a": []any{"x", "y"}}, pmap{"a": []any{"y", "x"}}, []string{"a"}},
		"nested leaf":         {pmap{"customFields": vip("gold")}, pmap{"customFields": vip("silver")}, []string{"customFields.vip.level"}},
		"nested equal":        {pmap{"customFields": vip("gold")}, pmap{"customFields": vip("gold")}, nil},
		"nested added":        {pmap{"customFields": map[string]any{}}, pmap{"customFields": vip("gold")}, []string{"customFields.region", "customFields.vip"}},
		"nested object added": {pmap{}, pmap{"customFields": vip("gold")}, []string{"customFields"}},
		"object to scalar":    {pmap{"customFields": vip("gold")}, pmap{"customFields": "none"}, []string{"customFields"}},
		"nested null absent":  {pmap{"c": map[string]any{"x": nil}}, pmap{"c": map[string]any{}}, nil},
		"profile-typed child": {pmap{"c": pmap{"x": 1.0}}, pmap{"c": map[string]any{"x": 2.0}}, []string{"c.x"}},
		"several sorted":      {pmap{"z": 1.0, "a": 1.0, "m": map[string]any{"b": 1.0, "a": 1.0}}, pmap{"z": 2.0, "a": 2.0, "m": map[string]any{"b": 2.0, "a": 2.0}}, []string{"a", "m.a", "m.b", "z"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := ChangedPaths(NewProfile(tt.old), NewProfile(tt.new)); !slices.Equal(got, tt.want) {
				t.Errorf("ChangedPaths = %q, want %q", got, tt.want)
			}
			if got := ChangedPaths(NewProfile(tt.new), NewProfile(tt.old)); !slices.Equal(got, tt.want) {
				t.Errorf("ChangedPaths reversed = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestApplyChanges(t *testing.T) {
	base := func() pmap {
		return pmap{
			"tier":   "gold",
			"points": 10.0,
			"badges": []any{"b1"},
			"customFields": map[string]any{
				"region": "eu",
				"vip":    map[string]any{"level": "gold"},
			},
		}
	}
	tests := map[string]struct {
		old         pmap
		changes     map[string]any
		want        pmap
		wantChanged []string
	}{
		"no changes": {base(), nil, base(), nil},
		"set top-level": {
			base(), map[string]any{"tier": "silver", "points": 10.0},
			func() pmap { p := base(); p["tier"] = "silver"; return p }(),
			[]string{"tier"},
		},
		"add field": {
			base(), map[string]any{"xp": 5.0},
			func() pmap { p := base(); p["xp"] = 5.0; return p }(),
			[]string{"xp"},
		},
		"remove with null": {
			base(), map[string]any{"points": nil},
			func() pmap { p := base(); delete(p, "points"); return p }(),
			[]string{"points"},
		},
		"remove absent": {base(), map[string]any{"nope": nil}, base(), nil},
		"remove nested under absent": {
			base(), map[string]any{"nope.deeper": nil}, base(), nil,
		},
		// No object holds such a field: it is absent, and stays so.
		"remove nested under a number": {
			base(), map[string]any{"points.x": nil, "xp": 1.0},
			func() pmap { p := base(); p["xp"] = 1.0; return p }(),
			[]string{"xp"},
		},
		"set nested": {
			base(), map[string]any{"customFields.vip.level": "platinum"},
			func() pmap {
				p := base()
				p["customFields"] = map[string]any{"region": "eu", "vip": map[string]any{"level": "platinum"}}
				return p
			}(),
			[]string{"customFields.vip.level"},
		},
		"remove nested": {
			base(), map[string]any{"customFields.vip.level": nil},
			func() pmap {
				p := base()
				p["customFields"] = map[string]any{"region": "eu", "vip": map[string]any{}}
				return p
			}(),
			[]string{"customFields.vip.level"},
		},
		"create nested": {
			pmap{"tier": "gold"}, map[string]any{"customFields.vip.level": "gold"},
			pmap{"tier": "gold", "customFields": map[string]any{"vip": map[string]any{"level": "gold"}}},
			[]string{"customFields"},
		},
		"create under null": {
			pmap{"customFields": nil}, map[string]any{"customFields.vip": true},
			pmap{"customFields": map[string]any{"vip": true}},
			[]string{"customFields"},
		},
		"create from nil profile": {
			nil, map[string]any{"a.b": 1.0, "c": "x"},
			pmap{"a": map[string]any{"b": 1.0}, "c": "x"},
			[]string{"a", "c"},
		},
		"replace object then set inside": {
			base(), map[string]any{"customFields": map[string]any{"region": "us"}, "customFields.vip.level": "silver"},
			func() pmap {
				p := base()
				p["customFields"] = map[string]any{"region": "us", "vip": map[string]any{"level": "silver"}}
				return p
			}(),
			[]string{"customFields.region", "customFields.vip.level"},
		},
		"replace object with same": {
			base(), map[string]any{"customFields": map[string]any{"region": "eu", "vip": map[string]any{"level": "gold"}}},
			base(), nil,
		},
		"keys around a prefix": {
			pmap{"a": map[string]any{"b": 1.0}}, map[string]any{"a.b": 2.0, "a-b": 1.0, "a.c": 3.0},
			pmap{"a": map[string]any{"b": 2.0, "c": 3.0}, "a-b": 1.0},
			[]string{"a-b", "a.b", "a.c"},
		},
		"same value": {base(), map[string]any{"customFields.vip.level": "gold"}, base(), nil},
		"two siblings": {
			base(), map[string]any{"customFields.region": "us", "customFields.vip.level": "silver"},
			func() pmap {
				p := base()
				p["customFields"] = map[string]any{"region": "us", "vip": map[string]any{"level": "silver"}}
				return p
			}(),
			[]string{"customFields.region", "customFields.vip.level"},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			before := deepCopy(map[string]any(tt.old))
			changesCopy := deepCopy(map[string]any(tt.changes))
			got, changed, err := ApplyChanges(NewProfile(tt.old), tt.changes)
			if err != nil {
				t.Fatalf("ApplyChanges: %v", err)
			}
			if !reflect.DeepEqual(got.Map(), NewProfile(tt.want).Map()) {
				t.Errorf("profile = %#v\nwant %#v", got, tt.want)
			}
			if !slices.Equal(changed, tt.wantChanged) {
				t.Errorf("changed = %q, want %q", changed, tt.wantChanged)
			}
			if want := ChangedPaths(NewProfile(tt.old), got); !slices.Equal(changed, want) {
				t.Errorf("changed = %q, ChangedPaths = %q", changed, want)
			}
			if !reflect.DeepEqual(map[string]any(tt.old), before) {
				t.Errorf("old profile modified: %#v", tt.old)
			}
			if tt.changes != nil && !reflect.DeepEqual(map[string]any(tt.changes), changesCopy) {
				t.Errorf("changes modified: %#v", tt.changes)
			}
		})
	}
}

func TestApplyChangesCopyOnWrite(t *testing.T) {
	untouched := map[string]any{"a": 1.0}
	old := pmap{
		"customFields": map[string]any{"vip": map[string]any{"level": "gold"}, "other": untouched},
		"list":         []any{"x"},
	}
	got, _, err := ApplyChanges(NewProfile(old), map[string]any{"customFields.vip.level": "silver"})
	if err != nil {
		t.Fatal(err)
	}
	if lookupPath(NewProfile(old), "customFields.vip.level") != "gold" {
		t.Error("old profile modified")
	}
	// Objects off the patch's paths are shared, not copied.
	untouched["a"] = 2.0
	if lookupPath(got, "customFields.other.a") != 2.0 {
		t.Error("an object off the patch's paths was copied")
	}
	// The new profile's own objects can be modified without touching old.
	got.Get("customFields").(map[string]any)["vip"].(map[string]any)["level"] = "bronze"
	got.Set("tier", "x")
	if lookupPath(NewProfile(old), "customFields.vip.level") != "gold" || old["tier"] != nil {
		t.Error("modifying the new profile modified old")
	}
}

func TestApplyChangesErrors(t *testing.T) {
	old := pmap{"points": 10.0, "badges": []any{"b1"}, "customFields": map[string]any{"vip": "yes"}}
	tests := map[string]struct {
		changes map[string]any
		fields  []string
	}{
		"empty path":          {map[string]any{"": 1.0}, []string{""}},
		"empty segment":       {map[string]any{"customFields..vip": 1.0}, []string{"customFields..vip"}},
		"trailing dot":        {map[string]any{"customFields.": 1.0}, []string{"customFields."}},
		"leading dot":         {map[string]any{".tier": 1.0}, []string{".tier"}},
		"crosses number":      {map[string]any{"points.x": 1.0}, []string{"points.x"}},
		"crosses array":       {map[string]any{"badges.0": "b2"}, []string{"badges.0"}},
		"crosses nested":      {map[string]any{"customFields.vip.level": "gold"}, []string{"customFields.vip.level"}},
		"several, sorted":     {map[string]any{"z..": 1.0, "a.": 1.0, "tier": "ok"}, []string{"a.", "z.."}},
		"crossing a new leaf": {map[string]any{"tier": "gold", "tier.level": 1.0}, []string{"tier.level"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			before := deepCopy(map[string]any(old))
			p, changed, err := ApplyChanges(NewProfile(old), tt.changes)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error = %v, want a *ValidationError", err)
			}
			if p != nil || changed != nil {
				t.Error("a result came with the error")
			}
			if ve.Code != CodeValidationFailed {
				t.Errorf("Code = %q", ve.Code)
			}
			var fields []string
			for _, fe := range ve.Errors {
				fields = append(fields, fe.Field)
			}
			if !slices.Equal(fields, tt.fields) {
				t.Errorf("fields = %q, want %q", fields, tt.fields)
			}
			if !reflect.DeepEqual(map[string]any(old), before) {
				t.Error("old profile modified")
			}
		})
	}
}

// deepCopy copies decoded JSON.
func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		if x == nil {
			return x
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = deepCopy(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = deepCopy(e)
		}
		return out
	}
	return v
}

// pmap is a profile written as a map, as the tests spell them.
type pmap = map[string]any

func TestProfileFields(t *testing.T) {
	for i, k := range knownFields {
		if knownSlot(k) != i {
			t.Errorf("knownSlot(%q) = %d, want %d", k, knownSlot(k), i)
		}
	}
	p := NewProfile(pmap{"tier": "gold", "plan": "pro", "email": nil, "note": nil})
	if p.Len() != 2 || p.Get("tier") != "gold" || p.Get("plan") != "pro" {
		t.Fatalf("NewProfile kept %v, want tier and plan (nulls dropped)", p.Map())
	}
	c := p.Clone()
	c.Set("tier", nil)
	c.Set("plan", "free")
	c.Set("points", 5.0)
	if p.Get("tier") != "gold" || p.Get("plan") != "pro" || p.Get("points") != nil {
		t.Errorf("setting a clone changed the original: %v", p.Map())
	}
	if got := c.Map(); !reflect.DeepEqual(got, pmap{"plan": "free", "points": 5.0}) {
		t.Errorf("clone = %v", got)
	}
	var keys []string
	for k := range NewProfile(pmap{"zz": 1.0, "customFields": pmap{}, "userId": "u"}).All() {
		keys = append(keys, k)
	}
	if !slices.Equal(keys, []string{"userId", "customFields", "zz"}) {
		t.Errorf("All yields %q, want the contract's fields in order, then the others", keys)
	}
	var none *Profile
	if none.Len() != 0 || none.Get("tier") != nil || len(none.Map()) != 0 || none.Clone().Len() != 0 {
		t.Error("a nil profile is not empty")
	}
}

func TestProfileJSON(t *testing.T) {
	var p Profile
	if err := json.Unmarshal([]byte(`{"tier":"gold","x":{"y":[1,null]},"n":null}`), &p); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(&p)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"tier":"gold","x":{"y":[1,null]}}` {
		t.Errorf("round trip gives %s", b)
	}
	if err := json.Unmarshal([]byte(`[1]`), &p); err == nil {
		t.Error("an array decoded as a profile")
	}
}

// TestApplyChangesManyPaths applies a patch of many fields, each in an
// object of its own ("f123.x") or at the top level, as a valid event of a
// few hundred kilobytes may: every field is set and every path reported.
// Its cost is BenchmarkApplyChangesManyPaths's.
func TestApplyChangesManyPaths(t *testing.T) {
	p, changed, err := ApplyChanges(nil, manyPaths(5_000))
	if err != nil {
		t.Fatal(err)
	}
	if p.Len() != 10_000 || len(changed) != 10_000 {
		t.Fatalf("%d fields and %d changed paths, want 10000 each", p.Len(), len(changed))
	}
	// A new object is one changed path, as ChangedPaths gives it.
	for path, top := range map[string]string{"f0.x": "f0", "f4999.x": "f4999", "g0": "g0", "g4999": "g4999"} {
		if !slices.Contains(changed, top) || lookupPath(p, path) != 1.0 {
			t.Errorf("%s: %s changed %t, value %v; want changed and 1", path, top, slices.Contains(changed, top), lookupPath(p, path))
		}
	}
}

// manyPaths is a patch of 2n paths: n in objects of their own, n at the
// top level.
func manyPaths(n int) map[string]any {
	changes := make(map[string]any, 2*n)
	for i := range n {
		changes[fmt.Sprintf("f%d.x", i)] = 1.0
		changes[fmt.Sprintf("g%d", i)] = 1.0
	}
	return changes
}

func BenchmarkApplyChangesManyPaths(b *testing.B) {
	for _, n := range []int{500, 5_000, 20_000} {
		changes := manyPaths(n)
		b.Run(fmt.Sprint(2*n), func(b *testing.B) {
			for b.Loop() {
				if _, _, err := ApplyChanges(nil, changes); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkApplyChanges(b *testing.B) {
	old := NewProfile(benchProfile())
	changes := map[string]any{"points": 1100.0, "updatedAt": "2026-11-25T17:00:00Z", "customFields.f7": 60.0}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ApplyChanges(old, changes); err != nil {
			b.Fatal(err)
		}
	}
}

// nested returns d objects nested under key, the innermost holding leaf.
func nested(d int, key string, leaf any) map[string]any {
	var v any = leaf
	for range d {
		v = map[string]any{key: v}
	}
	return v.(map[string]any)
}

// TestChangedPathsDeepProfile compares profiles nested as deep as a valid
// event may nest them (its JSON goes 10,000 levels deep, and a patch path
// deeper still): a difference below the depth or size that ChangedPaths
// lists path by path is listed as its top-level field, which the field
// index takes as a change of every path below it, and ApplyChanges lists
// the same. Listing the full path of each difference cost the square of
// the depth in memory: 1.6 GB for a profile of 8,000 levels of 50-byte
// keys (BenchmarkChangedPathsDeep).
func TestChangedPathsDeepProfile(t *testing.T) {
	key := "k"
	for _, d := range []int{maxChangedPathDepth, maxChangedPathDepth + 1, 8_000} {
		old := NewProfile(pmap{"customFields": nested(d, key, 1.0), "tier": "gold"})
		nw := NewProfile(pmap{"customFields": nested(d, key, 2.0), "tier": "silver"})
		want := []string{"customFields." + strings.Repeat(key+".", d-1) + key, "tier"}
		if d > maxChangedPathDepth {
			want = []string{"customFields", "tier"}
		}
		if got := ChangedPaths(old, nw); !slices.Equal(got, want) {
			t.Errorf("depth %d: ChangedPaths = %.80q, want %.80q", d, got, want)
		}
		path := "customFields." + strings.Repeat(key+".", d-1) + key
		p, changed, err := ApplyChanges(old, map[string]any{path: 2.0, "tier": "silver"})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(changed, want) {
			t.Errorf("depth %d: ApplyChanges changed = %.80q, want %.80q", d, changed, want)
		}
		if got := lookupPath(p, path); got != 2.0 {
			t.Errorf("depth %d: patched value %v, want 2", d, got)
		}
		if got := lookupPath(old, path); got != 1.0 {
			t.Errorf("depth %d: the old profile changed: %v, want 1", d, got)
		}
		if got := ChangedPaths(old, p); !slices.Equal(got, want) {
			t.Errorf("depth %d: ChangedPaths of the patched profile = %.80q, want %.80q", d, got, want)
		}
	}
	// Many differences under one long key: listed whole, each path would
	// repeat the key.
	long := strings.Repeat("x", 100_000)
	leaves := func(v float64) map[string]any {
		m := map[string]any{}
		for i := range 5_000 {
			m[fmt.Sprint("f", i)] = v
		}
		return m
	}
	old := NewProfile(pmap{"customFields": map[string]any{long: leaves(1)}})
	nw := NewProfile(pmap{"customFields": map[string]any{long: leaves(2)}})
	if got := ChangedPaths(old, nw); !slices.Equal(got, []string{"customFields"}) {
		t.Errorf("ChangedPaths under a long key = %d paths, want [customFields]", len(got))
	}
	// Within the bounds, every path is listed.
	few := map[string]any{}
	for i := range 2_000 {
		few[fmt.Sprint("f", i)] = 1.0
	}
	old = NewProfile(pmap{"customFields": map[string]any{"vip": few}})
	nw = NewProfile(pmap{"customFields": map[string]any{"vip": map[string]any{}}})
	if got := ChangedPaths(old, nw); len(got) != 2_000 || got[0] != "customFields.vip.f0" {
		t.Errorf("ChangedPaths of 2,000 leaves = %d paths, first %.40q; want 2000, customFields.vip.f0", len(got), got[0])
	}
}

// TestChangedPathsSameAnswerEachTime: the paths listed for two profiles do
// not depend on the order in which a map's keys happen to be visited. A
// field collapsed to its top-level name (here "a", for a difference deeper
// than maxChangedPathDepth) must not spend the byte budget of the fields
// after it on paths it does not list: otherwise "b" is listed path by path
// or whole from one call to the next, and ApplyChanges and ChangedPaths
// give different answers for the same change.
func TestChangedPathsSameAnswerEachTime(t *testing.T) {
	a, oa := map[string]any{"deep": nested(maxChangedPathDepth+5, "k", 1.0)}, map[string]any{"deep": nested(maxChangedPathDepth+5, "k", 2.0)}
	for i := range 400 {
		k := fmt.Sprintf("key%03d_%s", i, strings.Repeat("x", 90))
		a[k], oa[k] = 1.0, 2.0
	}
	b := map[string]any{}
	for i := range 300 {
		b[fmt.Sprintf("key%03d_%s", i, strings.Repeat("y", 90))] = 1.0
	}
	old := NewProfile(pmap{"a": oa, "b": map[string]any{}})
	nw := NewProfile(pmap{"a": a, "b": b})
	answers := map[int]int{}
	for range 100 {
		answers[len(ChangedPaths(old, nw))]++
	}
	if len(answers) != 1 {
		t.Errorf("ChangedPaths of the same two profiles listed different numbers of paths (count: times): %v", answers)
	}
}

// TestApplyChangesDeepPath applies a patch whose one path is 100,000 keys
// deep (200 KB): each object on it is made once. Looking each prefix of
// the path up cost the square of its length (0.5 s at 160 KB, growing
// four times with each doubling).
func TestApplyChangesDeepPath(t *testing.T) {
	path := strings.Repeat("a.", 100_000) + "b"
	p, changed, err := ApplyChanges(nil, map[string]any{path: 1.0, "a.c": true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(changed, []string{"a"}) || lookupPath(p, path) != 1.0 || lookupPath(p, "a.c") != true {
		t.Fatalf("changed %q, values %v %v; want [a], 1, true", changed, lookupPath(p, path), lookupPath(p, "a.c"))
	}
}

func BenchmarkChangedPathsDeep(b *testing.B) {
	key := strings.Repeat("k", 50)
	for _, d := range []int{1_000, 2_000, 4_000, 8_000} {
		old := NewProfile(pmap{"customFields": nested(d, key, 1.0)})
		nw := NewProfile(pmap{"customFields": nested(d, key, 2.0)})
		b.Run(fmt.Sprint(d), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ChangedPaths(old, nw)
			}
		})
	}
}

func BenchmarkApplyChangesDeepPath(b *testing.B) {
	for _, d := range []int{20_000, 40_000, 80_000} {
		changes := map[string]any{strings.Repeat("a.", d) + "b": 1.0}
		b.Run(fmt.Sprint(d), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := ApplyChanges(nil, changes); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
