package processor_test

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// BenchmarkAffectedSegments compares, for one typical patch (points,
// updatedAt and one custom field) in an organisation of 1,000 segments,
// evaluating only the segments the field index names against evaluating
// every segment, each with and without the per-profile field memo and the
// guards.
func BenchmarkAffectedSegments(b *testing.B) {
	var defs []segment.Definition
	for i, c := range thousandSegments() {
		defs = append(defs, segment.Definition{ID: fmt.Sprintf("s%04d", i), OrgID: "acme", Type: segment.TypeDynamic, Criteria: c, Status: segment.StatusReady})
	}
	org := processor.Compile(1, defs, slog.New(slog.NewTextHandler(io.Discard, nil))).Org("acme")
	now := time.Now()
	old := segment.NewProfile(map[string]any{"tier": "gold", "points": 900.0, "xp": 4000.0, "coins": 12.0, "updatedAt": "2026-10-01T00:00:00Z",
		"customFields": map[string]any{"f7": 10.0, "f8": 3.0, "testAccount": false, "cohort": 7.0}})
	changes := map[string]any{"points": 1100.0, "updatedAt": "2026-11-25T17:00:00Z", "customFields.f7": 60.0}
	next, paths, err := segment.ApplyChanges(old, changes)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("index", func(b *testing.B) {
		b.ReportAllocs()
		var ns []int32
		n := 0
		for b.Loop() {
			ns = org.Index.AppendAffectedIndex(ns[:0], paths)
			for _, i := range ns {
				if org.ByNumber[i].Rule.Match(next, now) {
					n++
				}
			}
		}
		b.ReportMetric(float64(len(ns)), "segments/event")
	})
	b.Run("index+memo", func(b *testing.B) {
		b.ReportAllocs()
		var ns []int32
		n := 0
		lk := org.NewLookup()
		for b.Loop() {
			ns = org.Index.AppendAffectedIndex(ns[:0], paths)
			lk.Reset(next)
			for _, i := range ns {
				if org.ByNumber[i].Rule.MatchLookup(lk, now) {
					n++
				}
			}
		}
		b.ReportMetric(float64(len(ns)), "segments/event")
	})
	// What the processor does: guards first, then the rule.
	b.Run("index+memo+guards", func(b *testing.B) {
		b.ReportAllocs()
		var ns []int32
		n := 0
		lk := org.NewLookup()
		keys, ok := make([]any, len(org.GuardSlots)), make([]bool, len(org.GuardSlots))
		for b.Loop() {
			ns = org.Index.AppendAffectedIndex(ns[:0], paths)
			lk.Reset(next)
			for g, slot := range org.GuardSlots {
				keys[g], ok[g] = lk.GuardKey(slot)
			}
			for _, i := range ns {
				if !org.Guarded(i, keys, ok) && org.ByNumber[i].Rule.MatchLookup(lk, now) {
					n++
				}
			}
		}
		b.ReportMetric(float64(len(ns)), "segments/event")
	})
	b.Run("all+memo+guards", func(b *testing.B) {
		b.ReportAllocs()
		n := 0
		lk := org.NewLookup()
		keys, ok := make([]any, len(org.GuardSlots)), make([]bool, len(org.GuardSlots))
		for b.Loop() {
			lk.Reset(next)
			for g, slot := range org.GuardSlots {
				keys[g], ok[g] = lk.GuardKey(slot)
			}
			for i, cs := range org.ByNumber {
				if !org.Guarded(int32(i), keys, ok) && cs.Rule.MatchLookup(lk, now) {
					n++
				}
			}
		}
		b.ReportMetric(float64(len(org.IDs)), "segments/event")
	})
	b.Run("all+memo", func(b *testing.B) {
		b.ReportAllocs()
		n := 0
		lk := org.NewLookup()
		for b.Loop() {
			lk.Reset(next)
			for _, cs := range org.ByNumber {
				if cs.Rule.MatchLookup(lk, now) {
					n++
				}
			}
		}
		b.ReportMetric(float64(len(org.IDs)), "segments/event")
	})
	b.Run("all", func(b *testing.B) {
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			for _, cs := range org.ByNumber {
				if cs.Rule.Match(next, now) {
					n++
				}
			}
		}
		b.ReportMetric(float64(len(org.IDs)), "segments/event")
	})
}
