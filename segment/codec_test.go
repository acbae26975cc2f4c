package segment

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"
	"time"
)

func TestProfileCodecRoundTrip(t *testing.T) {
	cases := map[string]string{
		"empty":   `{}`,
		"typical": `{"userId":"u1","tier":"gold","points":1500,"xp":12000.5,"badges":["b0","b1",2,true,null],"email":"ada@example.com","updatedAt":"2024-01-15T10:30:00.123Z","customFields":{"vip":{"level":"gold","since":"2023-06-01T00:00:00Z"},"region":"eu","n":null}}`,
		"numbers": `{"zero":0,"neg":-42,"big":9007199254740991,"bigger":9007199254740993,"tiny":1e-300,"huge":1.7976931348623157e308,"negbig":-9007199254740991,"frac":-0.5}`,
		"unicode": `{"name":"Zoë ✓","":"empty key","nested":[[[]],{}]}`,
	}
	for name, js := range cases {
		t.Run(name, func(t *testing.T) {
			var want pmap
			if err := json.Unmarshal([]byte(js), &want); err != nil {
				t.Fatal(err)
			}
			want = NewProfile(want).Map() // without top-level nulls
			b := AppendProfile(nil, NewProfile(want))
			got, err := DecodeProfile(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Map(), want) {
				t.Fatalf("round trip:\n got %#v\nwant %#v", got, want)
			}
			fromJSON, err := DecodeProfile([]byte(js))
			if err != nil || !reflect.DeepEqual(fromJSON.Map(), want) {
				t.Fatalf("JSON profile decoded as %#v, %v", fromJSON, err)
			}
		})
	}
}

func TestProfileCodecNormalisesGoValues(t *testing.T) {
	p := pmap{"i": 7, "n": json.Number("2.5"), "s": []string{"a"}, "neg0": math.Copysign(0, -1)}
	got, err := DecodeProfile(AppendProfile(nil, NewProfile(p)))
	if err != nil {
		t.Fatal(err)
	}
	want := pmap{"i": 7.0, "n": 2.5, "s": []any{"a"}, "neg0": math.Copysign(0, -1)}
	if !math.Signbit(got.Get("neg0").(float64)) {
		t.Errorf("-0 lost its sign")
	}
	gm := got.Map()
	delete(gm, "neg0")
	delete(want, "neg0")
	if !reflect.DeepEqual(gm, want) {
		t.Fatalf("got %#v, want %#v", got, want)
	}
}

func TestDecodeProfileRejectsCorruptInput(t *testing.T) {
	good := AppendProfile(nil, NewProfile(pmap{"a": "xyz", "b": []any{1.0, 2.5}}))
	cases := map[string][]byte{
		"truncated":   good[:len(good)-3],
		"trailing":    append(append([]byte{}, good...), 0),
		"not object":  {profileMagic, tagString, 1, 'x'},
		"unknown tag": {profileMagic, tagObject, 1, 1, 'k', 0x7E},
		"huge count":  {profileMagic, tagObject, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F},
		"bad json":    []byte(`{"a":`),
		"empty":       nil,
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if p, err := DecodeProfile(b); err == nil {
				t.Fatalf("decoded %#v, want an error", p)
			}
		})
	}
}

// FuzzDecodeProfile checks that any input decodes or fails without
// panicking, and that whatever decodes encodes back to the same profile.
func FuzzDecodeProfile(f *testing.F) {
	f.Add(AppendProfile(nil, NewProfile(pmap{"a": "xyz", "b": []any{1.0, 2.5, nil, true}, "c": map[string]any{"d": false}})))
	f.Add([]byte(`{"x":[1,{"y":null}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodeProfile(b)
		if err != nil {
			if _, kerr := DecodeProfileKeys(b, []string{"a"}); kerr == nil {
				t.Fatalf("DecodeProfileKeys accepts what DecodeProfile refuses (%v)", err)
			}
			return
		}
		// Decoding some fields fails exactly when decoding all does, and
		// gives those fields.
		for _, keys := range [][]string{{}, {"a"}, {"b", "x", "zz"}} {
			part, err := DecodeProfileKeys(b, keys)
			if err != nil {
				t.Fatalf("DecodeProfileKeys(%v) failed where DecodeProfile did not: %v", keys, err)
			}
			want := pmap{}
			for _, k := range keys {
				if v := p.Get(k); v != nil {
					want[k] = v
				}
			}
			if !reflect.DeepEqual(jsonOf(t, part.Map()), jsonOf(t, want)) {
				t.Fatalf("DecodeProfileKeys(%v) = %v, want %v", keys, part, want)
			}
		}
		again, err := DecodeProfile(AppendProfile(nil, p))
		if err != nil {
			t.Fatalf("re-encoded profile does not decode: %v", err)
		}
		if !reflect.DeepEqual(jsonOf(t, again.Map()), jsonOf(t, p.Map())) {
			t.Fatalf("round trip changed %v into %v", p, again)
		}
	})
}

// TestDecodeProfileKeysEvaluatesAlike: a rule evaluates a profile decoded
// for its ProfileKeys as it does the whole profile.
func TestDecodeProfileKeysEvaluatesAlike(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	profiles := []pmap{
		benchProfile(),
		{"tier": "gold", "points": 1500.0, "customFields": map[string]any{"vip": map[string]any{"level": "gold"}}},
		{"points": 10.0, "email": nil, "badges": []any{"b1", 2.0}},
		{},
	}
	rules := map[string]Criteria{
		"empty include": {},
		"top-level":     {Include: []Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}},
		"nested":        {Include: []Criterion{{Field: "customFields.vip.level", Operator: "equals", Value: "gold", HasValue: true}}},
		"missing field": {Include: []Criterion{{Field: "email", Operator: "not_exists"}},
			Exclude: []Criterion{{Field: "badges", Operator: "contains", Value: "b1", HasValue: true}}},
		"relative date": {Include: []Criterion{{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true}}},
	}
	for name, c := range rules {
		t.Run(name, func(t *testing.T) {
			r, err := Compile(c)
			if err != nil {
				t.Fatal(err)
			}
			for i, p := range profiles {
				for _, b := range [][]byte{AppendProfile(nil, NewProfile(p)), mustJSON(t, p)} {
					part, err := DecodeProfileKeys(b, r.ProfileKeys())
					if err != nil {
						t.Fatal(err)
					}
					if part.Len() > len(r.ProfileKeys()) {
						t.Errorf("profile %d: kept %d fields for keys %v", i, part.Len(), r.ProfileKeys())
					}
					if got, want := r.Match(part, now), r.Match(NewProfile(p), now); got != want {
						t.Errorf("profile %d: Match on its keys = %v, on the whole profile = %v", i, got, want)
					}
				}
			}
		})
	}
}

func mustJSON(t *testing.T, p pmap) []byte {
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func jsonOf(t *testing.T, p pmap) string {
	b, err := json.Marshal(p)
	if err != nil {
		return "unmarshalable"
	}
	return string(b)
}

func BenchmarkProfileDecode(b *testing.B) {
	js, _ := json.Marshal(benchProfile())
	bin := AppendProfile(nil, NewProfile(benchProfile()))
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var p pmap
			if err := json.Unmarshal(js, &p); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(js)), "bytes")
	})
	b.Run("binary", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeProfile(bin); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(bin)), "bytes")
	})
	// What a backfill or audience search of a rule on points decodes.
	b.Run("binary-points-only", func(b *testing.B) {
		b.ReportAllocs()
		keys := []string{"points"}
		for b.Loop() {
			if _, err := DecodeProfileKeys(bin, keys); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(bin)), "bytes")
	})
}

func BenchmarkProfileEncode(b *testing.B) {
	p := benchProfile()
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("binary", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		sp := NewProfile(p)
		for b.Loop() {
			buf = AppendProfile(buf[:0], sp)
		}
	})
}
