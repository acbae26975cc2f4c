package api

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
)

// BenchmarkLongBodies sends bodies of 4 MiB of tiny elements, each refused
// with a 400: its B/op is what one such request costs the instance.
func BenchmarkLongBodies(b *testing.B) {
	rdb := testenv.EmbeddedRedisClient(b)
	users := membership.NewUsers(rdb)
	reg := prometheus.NewRegistry()
	s := New(Config{
		Definitions: membership.NewDefinitions(rdb), Membership: membership.NewSets(rdb), Profiles: users,
		Audience: processor.NewAudience(users, nil), Keys: map[string]string{"k": "bench"},
		Registerer: reg, Locks: membership.NewCoordinator(rdb),
	})
	zeros := "[" + strings.Repeat("0,", 2<<20) + "0]"
	var members strings.Builder
	for i := range 400_000 {
		fmt.Fprintf(&members, `,"k%d":0`, i)
	}
	for name, tc := range map[string]struct{ path, body string }{
		"search of many criteria": {"/v1/audience/search", `{"include": ` + zeros + `}`},
		"static list of numbers":  {"/v1/segments", `{"name": "x", "type": "static", "userIds": ` + zeros + `}`},
		"object of many members":  {"/v1/segments", `{"name": "x"` + members.String() + `}`},
		"static list of one id":   {"/v1/segments", `{"name": "x", "type": "static", "userIds": [` + strings.Repeat(`"a",`, 1<<20) + `"a"]}`},
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(tc.body))
				req.Header.Set("Authorization", "Bearer k")
				rec := httptest.NewRecorder()
				s.ServeHTTP(rec, req)
				if name != "static list of one id" && rec.Code != http.StatusBadRequest {
					b.Fatalf("status %d: %.200s", rec.Code, rec.Body)
				}
				b.ReportMetric(float64(rec.Body.Len()), "answer-bytes")
			}
		})
	}
}
