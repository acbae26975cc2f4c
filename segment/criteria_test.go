package segment

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCompileValidation(t *testing.T) {
	n := func(k int, c Criterion) []Criterion {
		out := make([]Criterion, k)
		for i := range out {
			out[i] = c
		}
		return out
	}
	ok := cr("tier", OpEquals, "gold")
	inc := func(c ...Criterion) Criteria { return Criteria{Include: c} }

	tests := map[string]struct {
		c      Criteria
		code   string
		fields []string
	}{
		"unknown operator":         {inc(cr("tier", "like", "g")), CodeValidationFailed, []string{"criteria.include[0].operator"}},
		"operator case":            {inc(cr("tier", "EQUALS", "g")), CodeValidationFailed, []string{"criteria.include[0].operator"}},
		"operator missing":         {inc(cr("tier", "", "g")), CodeValidationFailed, []string{"criteria.include[0].operator"}},
		"field empty":              {inc(cr("", OpEquals, "g")), CodeValidationFailed, []string{"criteria.include[0].field"}},
		"field empty segment":      {inc(cr("customFields..level", OpEquals, "g")), CodeValidationFailed, []string{"criteria.include[0].field"}},
		"field trailing dot":       {inc(cr("customFields.", OpEquals, "g")), CodeValidationFailed, []string{"criteria.include[0].field"}},
		"field leading dot":        {inc(cr(".tier", OpEquals, "g")), CodeValidationFailed, []string{"criteria.include[0].field"}},
		"field only dot":           {inc(cr(".", OpEquals, "g")), CodeValidationFailed, []string{"criteria.include[0].field"}},
		"field and operator":       {inc(cr("a..b", "~", "g")), CodeValidationFailed, []string{"criteria.include[0].field", "criteria.include[0].operator"}},
		"field and value":          {inc(cr("a.", OpIn, "g")), CodeValidationFailed, []string{"criteria.include[0].field", "criteria.include[0].value"}},
		"in scalar":                {inc(cr("tier", OpIn, "gold")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"in object":                {inc(cr("tier", OpIn, map[string]any{"a": "gold"})), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"in number":                {inc(cr("tier", OpIn, 1)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"not_in scalar":            {inc(cr("tier", OpNotIn, "gold")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"in missing value":         {inc(crNoValue("tier", OpIn)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"in null":                  {inc(cr("tier", OpIn, nil)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"gt non-date string":       {inc(cr("points", OpGreater, "1000")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"gt word":                  {inc(cr("points", OpGreater, "gold")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"gt date without zone":     {inc(cr("createdAt", OpGreater, "2024-01-01T00:00:00")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"gt impossible full-date":  {inc(cr("createdAt", OpGreater, "2024-02-30")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"gt impossible date":       {inc(cr("createdAt", OpGreater, "2023-02-29T00:00:00Z")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"gt offset minute 60":      {inc(cr("createdAt", OpGreater, "2024-01-15T10:30:00+01:60")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"lt relative bad unit":     {inc(cr("updatedAt", OpLess, "now-30y")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"lt relative no amount":    {inc(cr("updatedAt", OpLess, "now-d")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"lt relative no sign":      {inc(cr("updatedAt", OpLess, "now30d")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"lt relative dangling":     {inc(cr("updatedAt", OpLess, "now-")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"lt relative spaces":       {inc(cr("updatedAt", OpLess, "now - 30d")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"lt relative overflow":     {inc(cr("updatedAt", OpLess, "now-99999999999w")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"gte bool":                 {inc(cr("points", OpGreaterEq, true)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"lte array":                {inc(cr("points", OpLessEq, []any{1.0})), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"lt object":                {inc(cr("points", OpLess, map[string]any{})), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"gt null":                  {inc(cr("points", OpGreater, nil)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"gt missing value":         {inc(crNoValue("points", OpGreater)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"equals missing value":     {inc(crNoValue("tier", OpEquals)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"not_equals missing value": {inc(crNoValue("tier", OpNotEquals)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"contains missing value":   {inc(crNoValue("tier", OpContains)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"equals null":              {inc(cr("tier", OpEquals, nil)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"not_equals null":          {inc(cr("tier", OpNotEquals, nil)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"contains null":            {inc(cr("tier", OpContains, nil)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"contains array":           {inc(cr("badges", OpContains, []any{"b1"})), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"not_contains array":       {inc(cr("badges", OpNotContains, []any{})), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"exists with value":        {inc(cr("tier", OpExists, "x")), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"exists with null":         {inc(cr("tier", OpExists, nil)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"not_exists with value":    {inc(cr("tier", OpNotExists, true)), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"unsupported go type":      {inc(cr("tier", OpEquals, struct{}{})), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"NaN":                      {inc(cr("points", OpEquals, math.NaN())), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"infinity in array":        {inc(cr("points", OpIn, []any{math.Inf(1)})), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"bad json.Number":          {inc(cr("points", OpEquals, json.Number("1x"))), CodeValidationFailed, []string{"criteria.include[0].value"}},
		"errors in order": {
			Criteria{
				Include: []Criterion{ok, cr("tier", "bogus", 1)},
				Exclude: []Criterion{ok, ok, cr("points", OpGreater, "soon"), cr("", OpExists, 1)},
			},
			CodeValidationFailed,
			[]string{"criteria.include[1].operator", "criteria.exclude[2].value", "criteria.exclude[3].field", "criteria.exclude[3].value"},
		},
		"too many includes": {Criteria{Include: n(MaxInclude+1, ok)}, CodeLimitExceeded, []string{"criteria.include"}},
		"too many excludes": {Criteria{Exclude: n(MaxExclude+1, ok)}, CodeLimitExceeded, []string{"criteria.exclude"}},
		"too many of both":  {Criteria{Include: n(MaxInclude+5, ok), Exclude: n(MaxExclude+1, ok)}, CodeLimitExceeded, []string{"criteria.include", "criteria.exclude"}},
		"limit before validity": {
			Criteria{Include: n(MaxInclude+1, cr("", "?", nil))}, CodeLimitExceeded, []string{"criteria.include"},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := Compile(tt.c)
			if err == nil {
				t.Fatalf("Compile accepted %+v", tt.c)
			}
			if r != nil {
				t.Error("Compile returned a rule with an error")
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %v (%T) is not a *ValidationError", err, err)
			}
			if ve.Code != tt.code {
				t.Errorf("Code = %q, want %q", ve.Code, tt.code)
			}
			var fields []string
			for _, fe := range ve.Errors {
				fields = append(fields, fe.Field)
				if fe.Message == "" {
					t.Errorf("%s: empty message", fe.Field)
				}
			}
			if !slices.Equal(fields, tt.fields) {
				t.Errorf("fields = %q, want %q (%v)", fields, tt.fields, err)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, tt.code+": ") || !strings.Contains(msg, tt.fields[0]) {
				t.Errorf("Error() = %q", msg)
			}
		})
	}
}

func TestCompileAccepts(t *testing.T) {
	n := func(k int) []Criterion {
		out := make([]Criterion, k)
		for i := range out {
			out[i] = cr("tier", OpEquals, "gold")
		}
		return out
	}
	tests := map[string]Criteria{
		"empty":                  {},
		"limits exactly":         {Include: n(MaxInclude), Exclude: n(MaxExclude)},
		"any top-level field":    {Include: []Criterion{cr("favouriteColour", OpEquals, "blue")}},
		"deep path":              {Include: []Criterion{cr("a.b.c.d.e", OpEquals, 1)}},
		"odd characters in path": {Include: []Criterion{cr("customFields.näme-with space", OpEquals, 1)}},
		"relative now":           {Include: []Criterion{cr("updatedAt", OpLess, "now")}},
		"relative plus":          {Include: []Criterion{cr("updatedAt", OpLess, "now+2h")}},
		"relative zero":          {Include: []Criterion{cr("updatedAt", OpLess, "now-0d")}},
		"date with offset":       {Include: []Criterion{cr("createdAt", OpGreaterEq, "2024-01-01T00:00:00+05:30")}},
		"date with fraction":     {Include: []Criterion{cr("createdAt", OpLessEq, "2024-01-01T00:00:00.123456Z")}},
		"full-date":              {Include: []Criterion{cr("createdAt", OpGreaterEq, "2024-01-01")}},
		"number comparison":      {Include: []Criterion{cr("points", OpLess, -1.5)}},
		"int comparison":         {Include: []Criterion{cr("points", OpLess, int64(3))}},
		"in empty array":         {Include: []Criterion{cr("tier", OpIn, []any{})}},
		"in mixed array":         {Include: []Criterion{cr("tier", OpIn, []any{"a", 1.0, true, nil, []any{}, map[string]any{}})}},
		"contains number":        {Include: []Criterion{cr("badges", OpContains, 3)}},
		"contains bool":          {Include: []Criterion{cr("badges", OpNotContains, false)}},
		"equals object":          {Include: []Criterion{cr("obj", OpEquals, map[string]any{"a": []any{1.0}})}},
		"equals array":           {Include: []Criterion{cr("obj", OpNotEquals, []any{})}},
		"equals object of ints":  {Include: []Criterion{cr("obj", OpEquals, pmap{"a": 1})}},
		"value without HasValue": {Include: []Criterion{{Field: "tier", Operator: OpEquals, Value: "gold"}}},
		"exists":                 {Include: []Criterion{crNoValue("tier", OpExists)}, Exclude: []Criterion{crNoValue("x", OpNotExists)}},
	}
	for name, c := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := Compile(c)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			r.Match(NewProfile(opProfile()), testNow)
		})
	}
}

func TestRuleMetadata(t *testing.T) {
	c := Criteria{
		Include: []Criterion{
			cr("points", OpGreaterEq, 1000),
			cr("customFields.vip.level", OpEquals, "gold"),
			cr("points", OpLess, 5000),
		},
		Exclude: []Criterion{crNoValue("customFields.vip", OpNotExists), cr("tier", OpEquals, "free")},
	}
	r := MustCompile(c)
	if got, want := r.Fields(), []string{"customFields.vip", "customFields.vip.level", "points", "tier"}; !slices.Equal(got, want) {
		t.Errorf("Fields = %q, want %q", got, want)
	}
	r.Fields()[0] = "mutated"
	if r.Fields()[0] != "customFields.vip" {
		t.Error("Fields exposes the rule's own slice")
	}
	if !reflect.DeepEqual(r.Criteria(), c) {
		t.Errorf("Criteria = %+v, want %+v", r.Criteria(), c)
	}
	r.Criteria().Include[0].Field = "mutated"
	if r.Criteria().Include[0].Field != "points" {
		t.Error("Criteria exposes the rule's own slice")
	}
	if r.TimeDependent() {
		t.Error("TimeDependent without a relative date")
	}

	tests := map[string]struct {
		c    Criterion
		want bool
	}{
		"relative include": {cr("updatedAt", OpLess, "now-30d"), true},
		"now":              {cr("updatedAt", OpGreater, "now"), true},
		"absolute date":    {cr("updatedAt", OpLess, "2024-01-01T00:00:00Z"), false},
		"relative string":  {cr("note", OpEquals, "now-30d"), false},
		"number":           {cr("points", OpLess, 3), false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := MustCompile(Criteria{Include: []Criterion{tt.c}}).TimeDependent(); got != tt.want {
				t.Errorf("include: TimeDependent = %v, want %v", got, tt.want)
			}
			if got := MustCompile(Criteria{Exclude: []Criterion{tt.c}}).TimeDependent(); got != tt.want {
				t.Errorf("exclude: TimeDependent = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCompileDoesNotAlias(t *testing.T) {
	vals := []any{"gold"}
	c := Criteria{Include: []Criterion{cr("tier", OpIn, vals)}}
	r := MustCompile(c)
	vals[0] = "silver"
	c.Include[0].Field = "other"
	if !r.Match(NewProfile(pmap{"tier": "gold"}), testNow) {
		t.Error("changing the criteria after Compile changed the rule")
	}
}

func TestMustCompilePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("MustCompile did not panic on invalid criteria")
		}
	}()
	MustCompile(Criteria{Include: []Criterion{cr("", OpEquals, 1)}})
}

func TestParseRelative(t *testing.T) {
	const day = 24 * time.Hour
	tests := map[string]struct {
		in   string
		want time.Duration
		ok   bool
	}{
		"now":          {"now", 0, true},
		"minus days":   {"now-30d", -30 * day, true},
		"plus hours":   {"now+2h", 2 * time.Hour, true},
		"seconds":      {"now-45s", -45 * time.Second, true},
		"minutes":      {"now+15m", 15 * time.Minute, true},
		"weeks":        {"now-2w", -14 * day, true},
		"zero":         {"now-0d", 0, true},
		"leading zero": {"now-007d", -7 * day, true},
		"large":        {"now-15000w", -15000 * 7 * day, true},
		"overflow":     {"now-16000w", 0, false},
		"huge":         {"now-99999999999999999999s", 0, false},
		"empty":        {"", 0, false},
		"capitalised":  {"Now-1d", 0, false},
		"no sign":      {"now1d", 0, false},
		"no amount":    {"now-d", 0, false},
		"no unit":      {"now-30", 0, false},
		"bad unit":     {"now-30y", 0, false},
		"millis":       {"now-30ms", 0, false},
		"fraction":     {"now-1.5d", 0, false},
		"negative":     {"now--1d", 0, false},
		"spaces":       {"now - 1d", 0, false},
		"compound":     {"now-1d2h", 0, false},
		"suffix":       {"now-1dx", 0, false},
		"just sign":    {"now+", 0, false},
		"prefix":       {"xnow-1d", 0, false},
		"date":         {"2024-01-01T00:00:00Z", 0, false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := ParseRelative(tt.in)
			if ok != tt.ok || got != tt.want {
				t.Errorf("ParseRelative(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}
