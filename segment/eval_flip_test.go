package segment

import (
	"testing"
	"time"
)

func TestNextFlip(t *testing.T) {
	const day = 24 * time.Hour
	T := time.Date(2024, 5, 1, 8, 30, 0, 0, time.UTC)
	ts := T.Format(time.RFC3339)
	now := T.Add(10 * day)

	tests := map[string]struct {
		c      Criteria
		p      pmap
		want   time.Time
		wantOK bool
	}{
		// F < now+d holds once now passes F-d: it still fails at F-d itself.
		"lt":  {inc(cr("updatedAt", OpLess, "now-30d")), pmap{"updatedAt": ts}, T.Add(30*day + 1), true},
		"lte": {inc(cr("updatedAt", OpLessEq, "now-30d")), pmap{"updatedAt": ts}, T.Add(30 * day), true},
		"gt":  {inc(cr("updatedAt", OpGreater, "now-30d")), pmap{"updatedAt": ts}, T.Add(30 * day), true},
		"gte": {inc(cr("updatedAt", OpGreaterEq, "now-30d")), pmap{"updatedAt": ts}, T.Add(30*day + 1), true},
		"future offset": {
			inc(cr("trialEndsAt", OpLess, "now+2h")), pmap{"trialEndsAt": T.Add(20 * day).Format(time.RFC3339)},
			T.Add(20*day - 2*time.Hour + 1), true,
		},
		"now":         {inc(cr("expiresAt", OpGreater, "now")), pmap{"expiresAt": T.Add(15 * day).Format(time.RFC3339)}, T.Add(15 * day), true},
		"in exclude":  {exc(cr("updatedAt", OpLess, "now-30d")), pmap{"updatedAt": ts}, T.Add(30*day + 1), true},
		"nested":      {inc(cr("customFields.vip.since", OpLessEq, "now-2w")), pmap{"customFields": map[string]any{"vip": map[string]any{"since": ts}}}, T.Add(14 * day), true},
		"offset date": {inc(cr("updatedAt", OpLessEq, "now-30d")), pmap{"updatedAt": "2024-05-01T10:30:00+02:00"}, T.Add(30 * day), true},
		"fraction":    {inc(cr("updatedAt", OpLessEq, "now-30d")), pmap{"updatedAt": "2024-05-01T08:30:00.25Z"}, T.Add(30*day + 250*time.Millisecond), true},
		"earliest": {
			inc(cr("updatedAt", OpLess, "now-30d"), cr("createdAt", OpLessEq, "now-12d"), cr("lastLogin", OpLess, "now-90d")),
			pmap{"updatedAt": ts, "createdAt": ts, "lastLogin": ts},
			T.Add(12 * day), true,
		},
		"earliest across lists": {
			Criteria{Include: []Criterion{cr("updatedAt", OpLess, "now-30d")}, Exclude: []Criterion{cr("createdAt", OpLessEq, "now-20d")}},
			pmap{"updatedAt": ts, "createdAt": ts},
			T.Add(20 * day), true,
		},
		"already flipped": {inc(cr("updatedAt", OpLess, "now-5d")), pmap{"updatedAt": ts}, time.Time{}, false},
		"flips exactly now": {
			inc(cr("updatedAt", OpLessEq, "now-10d")), pmap{"updatedAt": ts}, time.Time{}, false,
		},
		"past one skipped": {
			inc(cr("updatedAt", OpLess, "now-5d"), cr("createdAt", OpLess, "now-30d")),
			pmap{"updatedAt": ts, "createdAt": ts},
			T.Add(30*day + 1), true,
		},
		"absent field":      {inc(cr("updatedAt", OpLess, "now-30d")), pmap{}, time.Time{}, false},
		"null field":        {inc(cr("updatedAt", OpLess, "now-30d")), pmap{"updatedAt": nil}, time.Time{}, false},
		"nil profile":       {inc(cr("updatedAt", OpLess, "now-30d")), nil, time.Time{}, false},
		"not a date":        {inc(cr("updatedAt", OpLess, "now-30d")), pmap{"updatedAt": "last week"}, time.Time{}, false},
		"number field":      {inc(cr("updatedAt", OpLess, "now-30d")), pmap{"updatedAt": 5.0}, time.Time{}, false},
		"absolute date":     {inc(cr("updatedAt", OpLess, "2024-06-01T00:00:00Z")), pmap{"updatedAt": ts}, time.Time{}, false},
		"no time criterion": {inc(cr("points", OpGreater, 1)), pmap{"points": 5.0}, time.Time{}, false},
		"empty rule":        {Criteria{}, pmap{"updatedAt": ts}, time.Time{}, false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			r := MustCompile(tt.c)
			got, ok := r.NextFlip(NewProfile(tt.p), now)
			if ok != tt.wantOK || !got.Equal(tt.want) {
				t.Fatalf("NextFlip = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
			if !ok {
				return
			}
			if !got.After(now) {
				t.Errorf("NextFlip %v is not after now %v", got, now)
			}
			// Some criterion differs just before and at the instant.
			before := r.Explain(NewProfile(tt.p), got.Add(-1))
			at := r.Explain(NewProfile(tt.p), got)
			changed := false
			for i := range at.Include {
				changed = changed || at.Include[i].Matched != before.Include[i].Matched
			}
			for i := range at.Exclude {
				changed = changed || at.Exclude[i].Matched != before.Exclude[i].Matched
			}
			if !changed {
				t.Errorf("no criterion changes between %v and %v", got.Add(-1), got)
			}
		})
	}
}

func TestNextFlipAgreesWithMatch(t *testing.T) {
	// Walking from flip to flip, Match changes at each and nowhere between.
	T := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
	for _, op := range []string{OpLess, OpLessEq, OpGreater, OpGreaterEq} {
		t.Run(op, func(t *testing.T) {
			r := MustCompile(inc(cr("seenAt", op, "now-3d")))
			p := pmap{"seenAt": T.Format(time.RFC3339)}
			now := T
			flip, ok := r.NextFlip(NewProfile(p), now)
			if !ok {
				t.Fatal("no flip")
			}
			if r.Match(NewProfile(p), flip.Add(-1)) != r.Match(NewProfile(p), now) {
				t.Errorf("Match changed before the flip at %v", flip)
			}
			if r.Match(NewProfile(p), flip) == r.Match(NewProfile(p), now) {
				t.Errorf("Match did not change at the flip %v", flip)
			}
			if _, ok := r.NextFlip(NewProfile(p), flip); ok {
				t.Error("a second flip after the only one")
			}
		})
	}
}

func TestNextFlipLocation(t *testing.T) {
	loc := time.FixedZone("X", 3600)
	r := MustCompile(inc(cr("at", OpLessEq, "now")))
	got, ok := r.NextFlip(NewProfile(pmap{"at": "2030-01-01T00:00:00Z"}), time.Date(2029, 1, 1, 0, 0, 0, 0, loc))
	if !ok || got.Location() != loc || !got.Equal(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("NextFlip = %v, %v", got, ok)
	}
}

func TestNextMembershipFlip(t *testing.T) {
	const day = 24 * time.Hour
	T := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
	ts := T.Format(time.RFC3339)
	now := T.Add(day)
	inactive := cr("updatedAt", OpLess, "now-30d")
	tests := map[string]struct {
		c      Criteria
		p      pmap
		want   time.Time
		wantOK bool
	}{
		"static include holds": {inc(cr("tier", OpEquals, "gold"), inactive), pmap{"tier": "gold", "updatedAt": ts}, T.Add(30*day + 1), true},
		"static include fails": {inc(cr("tier", OpEquals, "gold"), inactive), pmap{"tier": "free", "updatedAt": ts}, time.Time{}, false},
		"static exclude holds": {Criteria{Include: []Criterion{inactive}, Exclude: []Criterion{cr("tier", OpEquals, "free")}}, pmap{"tier": "gold", "updatedAt": ts}, T.Add(30*day + 1), true},
		"static exclude hits":  {Criteria{Include: []Criterion{inactive}, Exclude: []Criterion{cr("tier", OpEquals, "free")}}, pmap{"tier": "free", "updatedAt": ts}, time.Time{}, false},
		"settled relative":     {inc(cr("createdAt", OpGreater, "now-1h"), inactive), pmap{"createdAt": ts, "updatedAt": ts}, time.Time{}, false},
		"missing time field":   {inc(inactive), pmap{}, time.Time{}, false},
		"no time criterion":    {inc(cr("tier", OpEquals, "gold")), pmap{"tier": "gold"}, time.Time{}, false},
		"two pending":          {inc(inactive, cr("createdAt", OpLessEq, "now-10d")), pmap{"createdAt": ts, "updatedAt": ts}, T.Add(10 * day), true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			r := MustCompile(tt.c)
			got, ok := r.NextMembershipFlip(NewProfile(tt.p), now)
			if ok != tt.wantOK || !got.Equal(tt.want) {
				t.Errorf("NextMembershipFlip = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
			// It never reports a flip that NextFlip does not.
			if ok {
				if nf, nok := r.NextFlip(NewProfile(tt.p), now); !nok || !nf.Equal(got) {
					t.Errorf("NextFlip = %v, %v; NextMembershipFlip = %v", nf, nok, got)
				}
			}
		})
	}
}

func inc(c ...Criterion) Criteria { return Criteria{Include: c} }
func exc(c ...Criterion) Criteria { return Criteria{Exclude: c} }
