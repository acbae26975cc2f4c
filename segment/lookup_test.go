package segment

import (
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
	profiles := map[string]Profile{
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
			lk.Reset(p)
			for rname := range rules {
				want := plain[rname].Match(p, now)
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
	in, out := Profile{"points": 20.0}, Profile{"points": 1.0}
	for i := range 4 {
		p, want := in, true
		if i%2 == 1 {
			p, want = out, false
		}
		lk.Reset(p)
		if got := r.MatchLookup(lk, now); got != want {
			t.Fatalf("step %d (generation %d): MatchLookup = %v, want %v", i, lk.gen, got, want)
		}
	}
}
