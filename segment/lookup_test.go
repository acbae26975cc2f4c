package segment

import (
	"math"
	"strings"
	"testing"
	"time"
)

// TestMatchLookupAgreesWithMatch evaluates rules sharing fields against a
// sequence of profiles through one Lookup: a value memoised for one profile
// must never leak into the next.
func TestMatchLookupAgreesWithMatch(t *testing.T) {
	now := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	rules := map[string]Criteria{
		"gold with points": {Include: []Criterion{
			{Field: "tier", Operator: OpEquals, Value: "gold", HasValue: true},
			{Field: "points", Operator: OpGreaterEq, Value: 1000.0, HasValue: true},
		}},
		"points only":  {Include: []Criterion{{Field: "points", Operator: OpGreaterEq, Value: 500.0, HasValue: true}}},
		"nested level": {Include: []Criterion{{Field: "customFields.vip.level", Operator: OpIn, Value: []any{"gold", "silver"}, HasValue: true}}},
		"not nested":   {Exclude: []Criterion{{Field: "customFields.vip.level", Operator: OpExists}}},
		"inactive": {Include: []Criterion{{Field: "updatedAt", Operator: OpLess, Value: "now-30d", HasValue: true}},
			Exclude: []Criterion{{Field: "tier", Operator: OpEquals, Value: "test", HasValue: true}}},
	}
	profiles := map[string]pmap{
		"gold member": {"tier": "gold", "points": 1500.0, "updatedAt": "2024-01-01T00:00:00Z",
			"customFields": map[string]any{"vip": map[string]any{"level": "gold"}}},
		"silver few points": {"tier": "silver", "points": 600.0, "updatedAt": "2024-05-31T00:00:00Z"},
		"empty":             {},
		"nil":               nil,
		"test tier":         {"tier": "test", "updatedAt": "2020-01-01T00:00:00Z", "customFields": map[string]any{"vip": "flat"}},
	}
	slots := NewFieldSlots()
	bound := map[string]*Rule{}
	plain := map[string]*Rule{}
	for name, c := range rules {
		plain[name] = MustCompile(c)
		bound[name] = slots.Bind(plain[name])
	}
	if slots.Len() != 4 {
		t.Fatalf("slots number %d paths, want 4 (tier, points, customFields.vip.level, updatedAt)", slots.Len())
	}
	lk := slots.NewLookup()
	// Twice round, so that every profile follows a different one.
	for round := range 2 {
		for pname, p := range profiles {
			lk.Reset(NewProfile(p))
			for rname := range rules {
				want := plain[rname].Match(NewProfile(p), now)
				if got := bound[rname].MatchLookup(lk, now); got != want {
					t.Errorf("round %d, %s on %s: MatchLookup = %v, Match = %v", round, rname, pname, got, want)
				}
				if got := plain[rname].MatchLookup(lk, now); got != want {
					t.Errorf("round %d, %s on %s: unbound MatchLookup = %v, Match = %v", round, rname, pname, got, want)
				}
			}
		}
	}
}

// TestLookupGenerationWraps checks that a Lookup stays correct when its
// generation counter wraps around.
func TestLookupGenerationWraps(t *testing.T) {
	now := time.Now()
	slots := NewFieldSlots()
	r := slots.Bind(MustCompile(Criteria{Include: []Criterion{{Field: "points", Operator: OpGreaterEq, Value: 10.0, HasValue: true}}}))
	lk := slots.NewLookup()
	lk.gen = ^uint32(0) - 1
	in, out := pmap{"points": 20.0}, pmap{"points": 1.0}
	for i := range 4 {
		p, want := in, true
		if i%2 == 1 {
			p, want = out, false
		}
		lk.Reset(NewProfile(p))
		if got := r.MatchLookup(lk, now); got != want {
			t.Fatalf("step %d (generation %d): MatchLookup = %v, want %v", i, lk.gen, got, want)
		}
	}
}

// TestGuard: a rule's guard is its first positive include "equals" on a
// string, number or boolean, and a profile's guard key equals the guard's
// key exactly when that criterion holds.
func TestGuard(t *testing.T) {
	eq := func(field string, v any) Criterion {
		return Criterion{Field: field, Operator: OpEquals, Value: v, HasValue: true}
	}
	values := []any{"gold", "Gold", 7.0, int64(7), 7.5, math.Copysign(0, -1), 0.0, true, false, nil, []any{"gold"}, map[string]any{"a": 1.0}}
	for name, tc := range map[string]struct {
		criteria Criteria
		guarded  bool
	}{
		"string":            {Criteria{Include: []Criterion{{Field: "points", Operator: ">=", Value: 1.0, HasValue: true}, eq("tier", "gold")}}, true},
		"number, nested":    {Criteria{Include: []Criterion{eq("customFields.cohort", 7.0)}}, true},
		"zero":              {Criteria{Include: []Criterion{eq("n", 0.0)}}, true},
		"boolean":           {Criteria{Include: []Criterion{eq("vip", true)}}, true},
		"not_equals":        {Criteria{Include: []Criterion{{Field: "tier", Operator: "not_equals", Value: "gold", HasValue: true}}}, false},
		"exclude":           {Criteria{Exclude: []Criterion{eq("tier", "gold")}}, false},
		"array value":       {Criteria{Include: []Criterion{eq("badges", []any{"b1"})}}, false},
		"in is not a guard": {Criteria{Include: []Criterion{{Field: "tier", Operator: "in", Value: []any{"gold"}, HasValue: true}}}, false},
	} {
		t.Run(name, func(t *testing.T) {
			slots := NewFieldSlots()
			r := slots.Bind(MustCompile(tc.criteria))
			g, ok := r.Guard()
			if ok != tc.guarded {
				t.Fatalf("Guard() ok = %v, want %v", ok, tc.guarded)
			}
			if _, ok := MustCompile(tc.criteria).Guard(); ok {
				t.Error("an unbound rule has a guard")
			}
			if !ok {
				return
			}
			var gc Criterion
			for _, c := range tc.criteria.Include {
				if c.Operator == OpEquals {
					gc = c
				}
			}
			only := MustCompile(Criteria{Include: []Criterion{gc}})
			lk := slots.NewLookup()
			for _, v := range values {
				p := pmap{}
				setPath(p, gc.Field, v)
				lk.Reset(NewProfile(p))
				key, kok := lk.GuardKey(g.Slot)
				if got, want := kok && key == g.Key, only.Match(NewProfile(p), time.Now()); got != want {
					t.Errorf("value %#v: guard holds %v, criterion %v", v, got, want)
				}
			}
			lk.Reset(NewProfile(pmap{}))
			if key, kok := lk.GuardKey(g.Slot); kok && key == g.Key {
				t.Error("a missing field meets the guard")
			}
		})
	}
}

// setPath sets a dotted path in p, making the objects on the way.
func setPath(p pmap, path string, v any) {
	m := map[string]any(p)
	parts := strings.Split(path, ".")
	for _, k := range parts[:len(parts)-1] {
		next := map[string]any{}
		m[k] = next
		m = next
	}
	m[parts[len(parts)-1]] = v
}
