package segment

import "testing"

func BenchmarkParseVariants(b *testing.B) {
	for _, s := range []string{"2024-01-15T10:30:00Z", "2024-01-15T10:30:00.123Z", "2024-01-15T10:30:00.123456789Z", "2024-01-15T10:30:00+02:00"} {
		b.Run(s, func(b *testing.B) {
			for b.Loop() {
				sinkInst, _ = parseRFC3339Fast(s)
			}
		})
	}
}
