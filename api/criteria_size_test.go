package api

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/segmentd/segmentd/segment"
)

// TestCheckCriteriaSize: criteria over segment.MaxCriteriaBytes as JSON
// are limit_exceeded, naming the larger part.
func TestCheckCriteriaSize(t *testing.T) {
	values := func(n int) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = fmt.Sprintf("value-%07d", i)
		}
		return out
	}
	long := segment.Criterion{Field: "customFields.x", Operator: segment.OpIn, Value: values(20_000), HasValue: true}
	tests := map[string]struct {
		c     segment.Criteria
		field string // of the limit error; "" for none
	}{
		"a usual rule":         {segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: segment.OpGreaterEq, Value: 1000.0, HasValue: true}}}, ""},
		"10,000 values":        {segment.Criteria{Include: []segment.Criterion{{Field: "customFields.x", Operator: segment.OpIn, Value: values(10_000), HasValue: true}}}, ""},
		"a long include":       {segment.Criteria{Include: []segment.Criterion{long}}, "criteria.include"},
		"a long exclude":       {segment.Criteria{Exclude: []segment.Criterion{long}}, "criteria.exclude"},
		"a 300 KiB field path": {segment.Criteria{Include: []segment.Criterion{{Field: "customFields." + strings.Repeat("z", 300<<10), Operator: segment.OpExists}}}, "criteria.include"},
		"a 300 KiB string":     {segment.Criteria{Include: []segment.Criterion{{Field: "email", Operator: segment.OpEquals, Value: strings.Repeat("y", 300<<10), HasValue: true}}}, "criteria.include"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			err := checkCriteriaSize(tt.c)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("checkCriteriaSize = %v, want nil", err)
				}
				return
			}
			var ve *segment.ValidationError
			if !errors.As(err, &ve) || ve.Code != segment.CodeLimitExceeded || ve.Errors[0].Field != tt.field {
				t.Fatalf("checkCriteriaSize = %v, want limit_exceeded on %s", err, tt.field)
			}
		})
	}
}
