package segment

import (
	"testing"
	"time"
)

// benchCriteria is the five-criteria rule of the performance target.
func benchCriteria() Criteria {
	return Criteria{Include: []Criterion{
		{Field: "tier", Operator: "in", Value: []any{"gold", "platinum"}, HasValue: true},
		{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true},
		{Field: "badges", Operator: "contains", Value: "b1", HasValue: true},
		{Field: "customFields.vip.level", Operator: "equals", Value: "gold", HasValue: true},
		{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true},
	}}
}

// benchProfile is a typical profile, which is a member of benchCriteria at
// benchNow.
func benchProfile() pmap {
	return pmap{
		"userId":    "u_8f14e45f",
		"tier":      "gold",
		"points":    1500.0,
		"xp":        12000.0,
		"coins":     250.0,
		"badges":    []any{"b0", "b1", "b2"},
		"email":     "ada@example.com",
		"createdAt": "2023-01-10T08:00:00Z",
		"updatedAt": "2024-01-15T10:30:00.123Z",
		"customFields": map[string]any{
			"vip":    map[string]any{"level": "gold", "since": "2023-06-01T00:00:00Z"},
			"region": "eu",
		},
	}
}

var benchNow = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)

var sink bool

func BenchmarkMatch5(b *testing.B) {
	r := MustCompile(benchCriteria())
	p := NewProfile(benchProfile())
	if !r.Match(p, benchNow) {
		b.Fatal("benchmark profile does not match")
	}
	b.ReportAllocs()
	for b.Loop() {
		sink = r.Match(p, benchNow)
	}
}
