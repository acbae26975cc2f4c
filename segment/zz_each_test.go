package segment

import (
	"fmt"
	"testing"
)

func BenchmarkEach(b *testing.B) {
	p := benchProfile()
	for i, c := range benchCriteria().Include {
		r := MustCompile(Criteria{Include: []Criterion{c}})
		b.Run(fmt.Sprint(i), func(b *testing.B) {
			for b.Loop() {
				sink = r.Match(p, benchNow)
			}
		})
		b.Run(fmt.Sprint(i, "lookup"), func(b *testing.B) {
			for b.Loop() {
				sinkAny = lookup(p, r.include[0].path)
			}
		})
	}
	b.Run("parseZ", func(b *testing.B) {
		for b.Loop() {
			sinkInst, _ = parseTime("2024-01-15T10:30:00Z")
		}
	})
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			sinkInst, _ = parseTime("2024-01-15T10:30:00.123Z")
		}
	})
	b.Run("instantOf", func(b *testing.B) {
		for b.Loop() {
			sinkInst = instantOf(benchNow)
		}
	})
}

var sinkAny any
var sinkInst instant
