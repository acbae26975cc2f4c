package segment

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// FuzzCompile decodes criteria and a profile from JSON, compiles the
// criteria and, when they are accepted, evaluates them every way there is.
// Nothing may panic, and Match must agree with Explain and with MatchLookup,
// bound or not; a guard that fails must mean no match.
func FuzzCompile(f *testing.F) {
	profile := `{"tier":"gold","points":1500,"badges":["b1",2,true,null],"email":"a@b.c",
		"createdAt":"2024-01-15T10:30:00Z","updatedAt":"2024-05-20T12:00:00.5+02:00",
		"customFields":{"vip":{"level":"gold","since":"2023-06-01T00:00:00Z"},"n":null}}`
	seeds := []string{
		`{}`,
		`{"include":[],"exclude":[]}`,
		`{"include":[{"field":"tier","operator":"in","value":["gold","platinum"]},{"field":"points","operator":">=","value":1000},{"field":"badges","operator":"contains","value":"b1"},{"field":"customFields.vip.level","operator":"equals","value":"gold"},{"field":"updatedAt","operator":"<","value":"now-30d"}]}`,
		`{"include":[{"field":"tier","operator":"not_equals","value":{"a":[1,{"b":null}]}}]}`,
		`{"include":[{"field":"tier","operator":"not_in","value":[]}],"exclude":[{"field":"x","operator":"exists"}]}`,
		`{"exclude":[{"field":"customFields.n","operator":"not_exists"}]}`,
		`{"include":[{"field":"createdAt","operator":"<=","value":"2024-01-15T10:30:00+01:00"}]}`,
		`{"include":[{"field":"createdAt","operator":">","value":"now+2h"},{"field":"updatedAt","operator":">=","value":"now"}]}`,
		`{"include":[{"field":"a..b","operator":"equals","value":1}]}`,
		`{"include":[{"field":"a","operator":"equals","value":null}]}`,
		`{"include":[{"field":"a","operator":"exists","value":1}]}`,
		`{"include":[{"field":"a","operator":"contains","value":[1]}]}`,
		`{"include":[{"field":"a","operator":">","value":"now-99999999999w"}]}`,
		`{"include":[{"field":"badges","operator":"in","value":[null,2.0,true]}]}`,
		`{"include":[{"field":"email","operator":"not_contains","value":""}]}`,
		`{"include":[{"field":"points","operator":"<","value":-1e308}]}`,
	}
	profiles := []string{profile, `{}`, `null`, `{"tier":1,"points":"x","badges":"b1","customFields":3,"updatedAt":"2024-13-01T00:00:00Z"}`,
		`{"updatedAt":"2024-01-15T1:30:00Z","createdAt":"0000-01-01T00:00:00-23:59"}`}
	for i, s := range seeds {
		f.Add([]byte(s), []byte(profiles[i%len(profiles)]))
	}

	var fixed []pmap
	for _, s := range profiles {
		var p pmap
		if err := json.Unmarshal([]byte(s), &p); err != nil {
			f.Fatal(err)
		}
		fixed = append(fixed, p)
	}
	nows := []time.Time{
		time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("", -3600)),
	}

	f.Fuzz(func(t *testing.T, criteriaJSON, profileJSON []byte) {
		var c Criteria
		if err := json.Unmarshal(criteriaJSON, &c); err != nil {
			return
		}
		r, err := Compile(c)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || len(ve.Errors) == 0 || r != nil {
				t.Fatalf("Compile error %#v with rule %v", err, r)
			}
			if ve.Code != CodeValidationFailed && ve.Code != CodeLimitExceeded {
				t.Fatalf("unknown code %q", ve.Code)
			}
			return
		}
		ps := fixed
		var extra pmap
		if json.Unmarshal(profileJSON, &extra) == nil {
			ps = append(ps[:len(ps):len(ps)], extra)
		}
		slots := NewFieldSlots()
		// A path the slots already number, shared with the rule or not.
		slots.Bind(MustCompile(Criteria{Include: []Criterion{{Field: "points", Operator: OpExists}}}))
		bound := slots.Bind(r)
		lk := slots.NewLookup()
		fields := r.Fields()
		if (len(c.Include)+len(c.Exclude) > 0) != (len(fields) > 0) {
			t.Fatalf("Fields = %q for %d criteria", fields, len(c.Include)+len(c.Exclude))
		}
		for _, p := range ps {
			for _, now := range nows {
				m := r.Match(NewProfile(p), now)
				e := r.Explain(NewProfile(p), now)
				if m != e.Member {
					t.Fatalf("Match = %v, Explain().Member = %v for %s on %v", m, e.Member, criteriaJSON, p)
				}
				lk.Reset(NewProfile(p))
				if bm, um := bound.MatchLookup(lk, now), r.MatchLookup(lk, now); bm != m || um != m {
					t.Fatalf("Match = %v, MatchLookup bound = %v, unbound = %v for %s on %v", m, bm, um, criteriaJSON, p)
				}
				if g, ok := bound.Guard(); ok {
					key, kok := lk.GuardKey(g.Slot)
					if !(kok && key == g.Key) && m {
						t.Fatalf("guard %v rules out a member (key %v, %v) for %s on %v", g, key, kok, criteriaJSON, p)
					}
				}
				if len(e.Include) != len(c.Include) || len(e.Exclude) != len(c.Exclude) {
					t.Fatalf("Explain has %d+%d results for %d+%d criteria", len(e.Include), len(e.Exclude), len(c.Include), len(c.Exclude))
				}
				flip, ok := r.NextFlip(NewProfile(p), now)
				if ok && !flip.After(now) {
					t.Fatalf("NextFlip = %v, not after %v", flip, now)
				}
				if ok && !r.TimeDependent() {
					t.Fatal("NextFlip found a flip in a rule that does not depend on time")
				}
				mflip, mok := r.NextMembershipFlip(NewProfile(p), now)
				if mok && (!ok || !mflip.Equal(flip)) {
					t.Fatalf("NextMembershipFlip = %v, %v; NextFlip = %v, %v", mflip, mok, flip, ok)
				}
			}
		}
	})
}
