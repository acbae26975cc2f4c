package segment

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// cr builds a criterion with a value.
func cr(field, op string, v any) Criterion {
	return Criterion{Field: field, Operator: op, Value: v, HasValue: true}
}

// crNoValue builds a criterion without a value, for exists and not_exists.
func crNoValue(field, op string) Criterion { return Criterion{Field: field, Operator: op} }

var testNow = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)

// opProfile has a field of every JSON type, at the top level and nested.
func opProfile() pmap {
	return pmap{
		"tier":      "gold",
		"email":     "ada@example.com",
		"points":    1500.0,
		"zero":      0.0,
		"active":    true,
		"flag":      false,
		"badges":    []any{"b1", "b2", 3.0, true},
		"nums":      []any{1.0, 2.0},
		"purchases": []any{map[string]any{"sku": "x1", "qty": 2.0}, map[string]any{"sku": "y"}},
		"empty":     []any{},
		"createdAt": "2024-01-15T10:30:00Z",
		"updatedAt": "2024-05-20T12:00:00+02:00", // 10:00Z
		"fraction":  "2024-01-15T10:30:00.5Z",
		"birthday":  "1990-05-01",
		"nullField": nil,
		"obj":       map[string]any{"a": 1.0, "b": []any{"x"}},
		"customFields": map[string]any{
			"region": "eu",
			"vip": map[string]any{
				"level": "gold",
				"score": 7.0,
				"since": "2023-06-01T00:00:00Z",
				"tags":  []any{"x", "y"},
				"none":  nil,
			},
		},
	}
}

// negation maps each negatable operator to its negation.
var negation = map[string]string{
	OpEquals: OpNotEquals, OpIn: OpNotIn, OpContains: OpNotContains, OpExists: OpNotExists,
}

func TestMatchOperators(t *testing.T) {
	many := make([]any, 0, 25)
	for i := range 24 {
		many = append(many, fmt.Sprintf("tier%d", i))
	}
	many = append(many, "gold")

	tests := map[string]struct {
		c    Criterion
		want bool
	}{
		// equals
		"equals/string":                {cr("tier", OpEquals, "gold"), true},
		"equals/string other":          {cr("tier", OpEquals, "silver"), false},
		"equals/string case":           {cr("tier", OpEquals, "Gold"), false},
		"equals/string vs number":      {cr("points", OpEquals, "1500"), false},
		"equals/number":                {cr("points", OpEquals, 1500.0), true},
		"equals/number as int":         {cr("points", OpEquals, 1500), true},
		"equals/number json.Number":    {cr("points", OpEquals, json.Number("1500.0")), true},
		"equals/number other":          {cr("points", OpEquals, 1501.0), false},
		"equals/number vs string":      {cr("tier", OpEquals, 1.0), false},
		"equals/zero":                  {cr("zero", OpEquals, 0), true},
		"equals/bool true":             {cr("active", OpEquals, true), true},
		"equals/bool false":            {cr("flag", OpEquals, false), true},
		"equals/bool other":            {cr("active", OpEquals, false), false},
		"equals/bool vs string":        {cr("active", OpEquals, "true"), false},
		"equals/array":                 {cr("nums", OpEquals, []any{1.0, 2.0}), true},
		"equals/array ints":            {cr("nums", OpEquals, []any{1, 2}), true},
		"equals/array order":           {cr("nums", OpEquals, []any{2.0, 1.0}), false},
		"equals/array shorter":         {cr("nums", OpEquals, []any{1.0}), false},
		"equals/array vs scalar":       {cr("nums", OpEquals, 1.0), false},
		"equals/empty array":           {cr("empty", OpEquals, []any{}), true},
		"equals/object":                {cr("obj", OpEquals, map[string]any{"a": 1, "b": []any{"x"}}), true},
		"equals/object subset":         {cr("obj", OpEquals, map[string]any{"a": 1}), false},
		"equals/object other value":    {cr("obj", OpEquals, map[string]any{"a": 2, "b": []any{"x"}}), false},
		"equals/object null member":    {cr("obj", OpEquals, map[string]any{"a": 1, "b": []any{"x"}, "c": nil}), true},
		"equals/object null for value": {cr("obj", OpEquals, map[string]any{"a": nil, "b": []any{"x"}}), false},
		"equals/date as string":        {cr("createdAt", OpEquals, "2024-01-15T10:30:00Z"), true},
		"equals/same instant differs":  {cr("updatedAt", OpEquals, "2024-05-20T10:00:00Z"), false},
		"equals/nested":                {cr("customFields.vip.level", OpEquals, "gold"), true},
		"equals/nested number":         {cr("customFields.vip.score", OpEquals, 7), true},
		"equals/nested object":         {cr("customFields.vip.tags", OpEquals, []any{"x", "y"}), true},
		"equals/absent":                {cr("nope", OpEquals, "x"), false},
		"equals/null":                  {cr("nullField", OpEquals, "x"), false},
		"equals/nested absent":         {cr("customFields.vip.nope", OpEquals, "x"), false},
		"equals/nested null":           {cr("customFields.vip.none", OpEquals, "x"), false},
		"equals/nested parent absent":  {cr("customFields.nope.level", OpEquals, "x"), false},
		"equals/path through scalar":   {cr("tier.level", OpEquals, "gold"), false},
		"equals/path through array":    {cr("badges.0", OpEquals, "b1"), false},
		"equals/relative is plain str": {cr("tier", OpEquals, "now-30d"), false},

		// in
		"in/string":                {cr("tier", OpIn, []any{"gold", "platinum"}), true},
		"in/string absent from":    {cr("tier", OpIn, []any{"silver", "platinum"}), false},
		"in/string large list":     {cr("tier", OpIn, many), true},
		"in/string large list not": {cr("email", OpIn, many), false},
		"in/[]string value":        {cr("tier", OpIn, []string{"gold"}), true},
		"in/number":                {cr("points", OpIn, []any{2.0, 1500.0}), true},
		"in/number as int":         {cr("points", OpIn, []any{1500}), true},
		"in/number vs string":      {cr("points", OpIn, []any{"1500"}), false},
		"in/bool":                  {cr("active", OpIn, []any{true}), true},
		"in/bool other":            {cr("flag", OpIn, []any{true}), false},
		"in/empty value":           {cr("tier", OpIn, []any{}), false},
		"in/array shares":          {cr("badges", OpIn, []any{"zzz", "b2"}), true},
		"in/array shares number":   {cr("badges", OpIn, []any{3}), true},
		"in/array shares bool":     {cr("badges", OpIn, []any{true}), true},
		"in/array shares none":     {cr("badges", OpIn, []any{"zzz", false}), false},
		"in/array vs nested array": {cr("nums", OpIn, []any{[]any{1.0, 2.0}}), false},
		"in/empty array field":     {cr("empty", OpIn, []any{"a"}), false},
		"in/object":                {cr("obj", OpIn, []any{"x", map[string]any{"a": 1, "b": []any{"x"}}}), true},
		"in/object other":          {cr("obj", OpIn, []any{map[string]any{"a": 1}}), false},
		"in/nested":                {cr("customFields.vip.level", OpIn, []any{"gold"}), true},
		"in/nested array":          {cr("customFields.vip.tags", OpIn, []any{"y"}), true},
		"in/absent":                {cr("nope", OpIn, []any{"x"}), false},
		"in/null":                  {cr("nullField", OpIn, []any{"x"}), false},
		"in/nested null":           {cr("customFields.vip.none", OpIn, []any{"x"}), false},

		// contains
		"contains/substring":           {cr("email", OpContains, "@example"), true},
		"contains/whole string":        {cr("email", OpContains, "ada@example.com"), true},
		"contains/empty substring":     {cr("email", OpContains, ""), true},
		"contains/no substring":        {cr("email", OpContains, "zzz"), false},
		"contains/string vs number":    {cr("email", OpContains, 1.0), false},
		"contains/array string":        {cr("badges", OpContains, "b1"), true},
		"contains/array no string":     {cr("badges", OpContains, "b9"), false},
		"contains/array not substring": {cr("badges", OpContains, "b"), false},
		"contains/array number":        {cr("badges", OpContains, 3.0), true},
		"contains/array number as int": {cr("nums", OpContains, 1), true},
		"contains/array no number":     {cr("nums", OpContains, 3), false},
		"contains/array bool":          {cr("badges", OpContains, true), true},
		"contains/array no bool":       {cr("badges", OpContains, false), false},
		"contains/empty array":         {cr("empty", OpContains, "a"), false},
		"contains/number field":        {cr("points", OpContains, "1"), false},
		"contains/number field num":    {cr("points", OpContains, 1500.0), false},
		"contains/bool field":          {cr("active", OpContains, true), false},
		"contains/object field":        {cr("obj", OpContains, "a"), false},
		"contains/array of objects":    {cr("purchases", OpContains, map[string]any{"qty": 2.0, "sku": "x1"}), true},
		"contains/no such object":      {cr("purchases", OpContains, map[string]any{"sku": "x1"}), false},
		"contains/nested string":       {cr("customFields.vip.level", OpContains, "ol"), true},
		"contains/nested array":        {cr("customFields.vip.tags", OpContains, "x"), true},
		"contains/absent":              {cr("nope", OpContains, "x"), false},
		"contains/null":                {cr("nullField", OpContains, "x"), false},
		"contains/nested absent":       {cr("customFields.vip.nope", OpContains, "x"), false},

		// ordering, numbers
		"gt/number":               {cr("points", OpGreater, 1000.0), true},
		"gt/number equal":         {cr("points", OpGreater, 1500.0), false},
		"gte/number equal":        {cr("points", OpGreaterEq, 1500), true},
		"gte/number above":        {cr("points", OpGreaterEq, 1501), false},
		"lt/number":               {cr("points", OpLess, 2000), true},
		"lt/number equal":         {cr("points", OpLess, 1500), false},
		"lte/number equal":        {cr("points", OpLessEq, 1500), true},
		"lte/number below":        {cr("points", OpLessEq, 1499.5), false},
		"gt/negative":             {cr("zero", OpGreater, -5), true},
		"gt/nested number":        {cr("customFields.vip.score", OpGreater, 5), true},
		"gt/number vs string":     {cr("tier", OpGreater, 1), false},
		"gt/number vs date field": {cr("createdAt", OpGreater, 1), false},
		"gt/number vs array":      {cr("nums", OpGreater, 0), false},
		"gt/number vs bool":       {cr("active", OpGreater, 0), false},
		"lt/number vs object":     {cr("obj", OpLess, 10), false},
		"gt/number absent":        {cr("nope", OpGreater, 1), false},
		"lt/number null":          {cr("nullField", OpLess, 1), false},
		"lte/number nested null":  {cr("customFields.vip.none", OpLessEq, 1), false},

		// ordering, absolute dates
		"gt/date":                     {cr("createdAt", OpGreater, "2024-01-01T00:00:00Z"), true},
		"gt/date equal":               {cr("createdAt", OpGreater, "2024-01-15T10:30:00Z"), false},
		"gte/date equal":              {cr("createdAt", OpGreaterEq, "2024-01-15T10:30:00Z"), true},
		"lt/date":                     {cr("createdAt", OpLess, "2024-01-01T00:00:00Z"), false},
		"lt/date equal":               {cr("createdAt", OpLess, "2024-01-15T10:30:00Z"), false},
		"lte/date equal":              {cr("createdAt", OpLessEq, "2024-01-15T10:30:00Z"), true},
		"gt/date offsets same":        {cr("updatedAt", OpGreater, "2024-05-20T10:00:00Z"), false},
		"gte/date offsets same":       {cr("updatedAt", OpGreaterEq, "2024-05-20T10:00:00Z"), true},
		"lte/date value offset":       {cr("updatedAt", OpLessEq, "2024-05-20T11:00:00+01:00"), true},
		"lt/date value offset":        {cr("updatedAt", OpLess, "2024-05-20T05:30:00-04:30"), false},
		"gt/date fraction":            {cr("fraction", OpGreater, "2024-01-15T10:30:00Z"), true},
		"lt/date value fraction":      {cr("fraction", OpLess, "2024-01-15T10:30:00.500000001Z"), true},
		"gt/date nested":              {cr("customFields.vip.since", OpGreater, "2023-01-01T00:00:00Z"), true},
		"gt/date vs non-date string":  {cr("tier", OpGreater, "2024-01-01T00:00:00Z"), false},
		"gt/date vs number field":     {cr("points", OpGreater, "2024-01-01T00:00:00Z"), false},
		"gt/date vs array field":      {cr("badges", OpGreater, "2024-01-01T00:00:00Z"), false},
		"lt/date vs bad date in prof": {cr("email", OpLess, "2030-01-01T00:00:00Z"), false},
		"gt/date absent":              {cr("nope", OpGreater, "2024-01-01T00:00:00Z"), false},
		"gt/date null":                {cr("nullField", OpGreater, "2024-01-01T00:00:00Z"), false},
		"gt/full-date value":          {cr("createdAt", OpGreater, "2024-01-15"), true},
		"lt/full-date value":          {cr("createdAt", OpLess, "2024-01-15"), false},
		"gte/full-date in profile":    {cr("birthday", OpGreaterEq, "1990-05-01T00:00:00Z"), true},
		"gt/full-date in profile":     {cr("birthday", OpGreater, "1990-05-01T00:00:00Z"), false},
		"lt/full-date both":           {cr("birthday", OpLess, "1990-05-02"), true},
		"lt/full-date relative":       {cr("birthday", OpLess, "now-30d"), true},

		// ordering, relative dates (now = 2024-06-01T12:00:00Z)
		"lt/relative":               {cr("updatedAt", OpLess, "now-7d"), true},
		"gt/relative":               {cr("updatedAt", OpGreater, "now-7d"), false},
		"gt/relative weeks":         {cr("updatedAt", OpGreater, "now-2w"), true},
		"lt/relative days":          {cr("createdAt", OpLess, "now-30d"), true},
		"gte/relative hours":        {cr("createdAt", OpGreaterEq, "now-8000h"), true},
		"lte/relative minutes":      {cr("createdAt", OpLessEq, "now-100m"), true},
		"gt/relative seconds":       {cr("createdAt", OpGreater, "now-60s"), false},
		"lt/now":                    {cr("createdAt", OpLess, "now"), true},
		"lt/now plus":               {cr("createdAt", OpLess, "now+2h"), true},
		"gt/relative nested":        {cr("customFields.vip.since", OpGreater, "now-400d"), true},
		"lt/relative vs non-date":   {cr("tier", OpLess, "now"), false},
		"lt/relative vs number":     {cr("points", OpLess, "now"), false},
		"lt/relative absent":        {cr("nope", OpLess, "now-1d"), false},
		"gt/relative null":          {cr("nullField", OpGreater, "now-1d"), false},
		"lt/relative nested absent": {cr("customFields.vip.nope", OpLess, "now"), false},

		// exists
		"exists/string":        {crNoValue("tier", OpExists), true},
		"exists/zero":          {crNoValue("zero", OpExists), true},
		"exists/false":         {crNoValue("flag", OpExists), true},
		"exists/empty array":   {crNoValue("empty", OpExists), true},
		"exists/object":        {crNoValue("obj", OpExists), true},
		"exists/nested":        {crNoValue("customFields.vip.level", OpExists), true},
		"exists/nested object": {crNoValue("customFields.vip", OpExists), true},
		"exists/absent":        {crNoValue("nope", OpExists), false},
		"exists/null":          {crNoValue("nullField", OpExists), false},
		"exists/nested null":   {crNoValue("customFields.vip.none", OpExists), false},
		"exists/nested absent": {crNoValue("customFields.nope.level", OpExists), false},
		"exists/through array": {crNoValue("badges.length", OpExists), false},
	}
	p := opProfile()
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			check := func(c Criterion, want bool) {
				t.Helper()
				r, err := Compile(Criteria{Include: []Criterion{c}})
				if err != nil {
					t.Fatalf("Compile(%+v): %v", c, err)
				}
				if got := r.Match(NewProfile(p), testNow); got != want {
					t.Errorf("include %s %s %v: Match = %v, want %v", c.Field, c.Operator, c.Value, got, want)
				}
				if got := r.Explain(NewProfile(p), testNow); got.Member != want || got.Include[0].Matched != want {
					t.Errorf("include %s %s %v: Explain = %+v, want member %v", c.Field, c.Operator, c.Value, got, want)
				}
				// As an exclude criterion, the outcome is reversed.
				ex := MustCompile(Criteria{Exclude: []Criterion{c}})
				if got := ex.Match(NewProfile(p), testNow); got != !want {
					t.Errorf("exclude %s %s %v: Match = %v, want %v", c.Field, c.Operator, c.Value, got, !want)
				}
			}
			check(tt.c, tt.want)
			if neg, ok := negation[tt.c.Operator]; ok {
				c := tt.c
				c.Operator = neg
				check(c, !tt.want)
			}
		})
	}
}

func TestMatchNumberTypesInProfile(t *testing.T) {
	// Profiles decoded with UseNumber or built in Go carry other number types.
	tests := map[string]any{
		"float64":     1500.0,
		"int":         1500,
		"int64":       int64(1500),
		"json.Number": json.Number("1500"),
	}
	for name, v := range tests {
		t.Run(name, func(t *testing.T) {
			p := pmap{"points": v, "list": []any{v}}
			for _, c := range []Criterion{
				cr("points", OpEquals, 1500),
				cr("points", OpIn, []any{1500.0}),
				cr("points", OpGreaterEq, 1500),
				cr("list", OpContains, 1500),
				cr("list", OpEquals, []any{1500}),
			} {
				if !MustCompile(Criteria{Include: []Criterion{c}}).Match(NewProfile(p), testNow) {
					t.Errorf("%s %s %v: no match on %T", c.Field, c.Operator, c.Value, v)
				}
			}
		})
	}
}

func TestMatchCombination(t *testing.T) {
	rule := MustCompile(Criteria{
		Include: []Criterion{
			cr("tier", OpIn, []any{"gold", "platinum"}),
			cr("points", OpGreaterEq, 1000),
		},
		Exclude: []Criterion{
			cr("email", OpContains, "@test."),
			crNoValue("banned", OpExists),
		},
	})
	tests := map[string]struct {
		p    pmap
		want bool
	}{
		"all includes, no excludes": {pmap{"tier": "gold", "points": 1000.0, "email": "a@b.c"}, true},
		"one include fails":         {pmap{"tier": "silver", "points": 1000.0}, false},
		"other include fails":       {pmap{"tier": "gold", "points": 999.0}, false},
		"one exclude matches":       {pmap{"tier": "gold", "points": 1000.0, "email": "a@test.io"}, false},
		"other exclude matches":     {pmap{"tier": "gold", "points": 1000.0, "banned": true}, false},
		"null exclude field":        {pmap{"tier": "gold", "points": 1000.0, "banned": nil}, true},
		"empty profile":             {pmap{}, false},
		"nil profile":               {nil, false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := rule.Match(NewProfile(tt.p), testNow); got != tt.want {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
			if got := rule.Explain(NewProfile(tt.p), testNow).Member; got != tt.want {
				t.Errorf("Explain().Member = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMatchEmptyCriteria(t *testing.T) {
	r := MustCompile(Criteria{})
	for name, p := range map[string]pmap{"nil": nil, "empty": {}, "some": {"a": 1.0}} {
		if !r.Match(NewProfile(p), testNow) {
			t.Errorf("%s: empty criteria must match everyone", name)
		}
	}
	onlyExclude := MustCompile(Criteria{Exclude: []Criterion{cr("tier", OpEquals, "free")}})
	if !onlyExclude.Match(NewProfile(pmap{"tier": "gold"}), testNow) || onlyExclude.Match(NewProfile(pmap{"tier": "free"}), testNow) {
		t.Error("an empty include list must match everyone not excluded")
	}
}

func TestExplain(t *testing.T) {
	c := Criteria{
		Include: []Criterion{
			cr("tier", OpEquals, "gold"),
			cr("points", OpGreater, 2000),
			crNoValue("customFields.vip.level", OpExists),
		},
		Exclude: []Criterion{
			cr("badges", OpContains, "cheater"),
			cr("nullField", OpNotEquals, "x"),
		},
	}
	got := MustCompile(c).Explain(NewProfile(opProfile()), testNow)
	want := Explanation{
		Member: false,
		Include: []CriterionResult{
			{Criterion: c.Include[0], Matched: true, Present: true, Value: "gold"},
			{Criterion: c.Include[1], Matched: false, Present: true, Value: 1500.0},
			{Criterion: c.Include[2], Matched: true, Present: true, Value: "gold"},
		},
		Exclude: []CriterionResult{
			{Criterion: c.Exclude[0], Matched: false, Present: true, Value: []any{"b1", "b2", 3.0, true}},
			{Criterion: c.Exclude[1], Matched: true, Present: false, Value: nil},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Explain =\n%+v\nwant\n%+v", got, want)
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	r := MustCompile(benchCriteria())
	p := NewProfile(benchProfile())
	if n := testing.AllocsPerRun(100, func() { sink = r.Match(p, benchNow) }); n != 0 {
		t.Errorf("Match allocates %v times per run", n)
	}
	// A type mismatch must stay allocation-free too.
	mismatch := NewProfile(pmap{"tier": 1.0, "points": "x", "badges": "b1", "customFields": 3.0, "updatedAt": "yesterday"})
	if n := testing.AllocsPerRun(100, func() { sink = r.Match(mismatch, benchNow) }); n != 0 {
		t.Errorf("Match on mismatched types allocates %v times per run", n)
	}
	// Full dates, and strings of their length that are none, too.
	for _, d := range []string{"2024-01-15", "2024-55512", "2024-02-30"} {
		p := NewProfile(pmap{"tier": "gold", "points": 5000.0, "badges": []any{"b1"}, "updatedAt": d})
		if n := testing.AllocsPerRun(100, func() { sink = r.Match(p, benchNow) }); n != 0 {
			t.Errorf("Match with updatedAt %q allocates %v times per run", d, n)
		}
	}
}

func FuzzParseFullDate(f *testing.F) {
	for _, s := range []string{"2024-01-15", "2024-02-29", "1900-02-29", "0000-01-01", "2024-13-01", "2024-1-150"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseFullDate(s)
		want, err := time.Parse(time.DateOnly, s)
		if ok != (err == nil) {
			t.Fatalf("parseFullDate(%q) ok = %v, time.Parse error = %v", s, ok, err)
		}
		if ok && got != instantOf(want) {
			t.Fatalf("parseFullDate(%q) = %v, want %v", s, got, instantOf(want))
		}
	})
}

func TestParseTime(t *testing.T) {
	tests := map[string]struct {
		in string
		ok bool
	}{
		"utc":                {"2024-01-15T10:30:00Z", true},
		"offset":             {"2024-01-15T10:30:00+05:30", true},
		"negative offset":    {"2024-01-15T10:30:00-08:00", true},
		"millis":             {"2024-01-15T10:30:00.123Z", true},
		"nanos":              {"2024-01-15T10:30:00.123456789Z", true},
		"beyond nanos":       {"2024-01-15T10:30:00.1234567891Z", true},
		"leap day":           {"2024-02-29T00:00:00Z", true},
		"year zero":          {"0000-01-01T00:00:00Z", true},
		"year 9999":          {"9999-12-31T23:59:59Z", true},
		"before 1970":        {"1969-07-20T20:17:40Z", true},
		"one-digit hour":     {"2024-01-15T1:30:00Z", true}, // accepted by time.Parse
		"comma fraction":     {"2024-01-15T10:30:00,5Z", true},
		"not leap":           {"2023-02-29T00:00:00Z", false},
		"century not leap":   {"1900-02-29T00:00:00Z", false},
		"month 13":           {"2024-13-01T00:00:00Z", false},
		"month 0":            {"2024-00-01T00:00:00Z", false},
		"day 0":              {"2024-01-00T00:00:00Z", false},
		"day 32":             {"2024-01-32T00:00:00Z", false},
		"april 31":           {"2024-04-31T00:00:00Z", false},
		"hour 24":            {"2024-01-15T24:00:00Z", false},
		"minute 60":          {"2024-01-15T10:60:00Z", false},
		"second 61":          {"2024-01-15T10:30:61Z", false},
		"no zone":            {"2024-01-15T10:30:00", false},
		"date only":          {"2024-01-15", true}, // an RFC 3339 full-date: midnight UTC
		"date only, bad day": {"2024-02-30", false},
		"date only, short":   {"2024-1-15", false},
		"space separator":    {"2024-01-15 10:30:00Z", false},
		"lower z":            {"2024-01-15T10:30:00z", true}, // RFC 3339 allows t and z
		"lower t":            {"2024-01-15t10:30:00+01:00", true},
		"lower t and z":      {"2024-01-15t10:30:00.5z", true},
		"lower other letter": {"2024-01-15T10:30:00x", false},
		"bad offset":         {"2024-01-15T10:30:00+0530", false},
		"offset hour 23":     {"2024-01-15T10:30:00-23:59", true},
		"trailing garbage":   {"2024-01-15T10:30:00Zx", false},
		"letters in digits":  {"2024-0a-15T10:30:00Z", false},
		"symbol below zero":  {"2024-/1-15T10:30:00Z", false},
		"empty":              {"", false},
		"word":               {"gold", false},
		"dot without digits": {"2024-01-15T10:30:00.Z", false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := parseTime(tt.in)
			layout := time.RFC3339
			if len(tt.in) == len(time.DateOnly) {
				layout = time.DateOnly
			}
			want, err := time.Parse(layout, strings.ToUpper(tt.in))
			if ok != (err == nil) {
				t.Fatalf("parseTime(%q) ok = %v, time.Parse error = %v", tt.in, ok, err)
			}
			if ok != tt.ok {
				t.Fatalf("parseTime(%q) ok = %v, want %v", tt.in, ok, tt.ok)
			}
			if ok && got != instantOf(want) {
				t.Errorf("parseTime(%q) = %v, want %v", tt.in, got, instantOf(want))
			}
		})
	}
}

// TestParseTimeWhereRFC3339Parts: where time.Parse parts from RFC 3339
// (section 5.6), dates follow RFC 3339, as the contract names it.
func TestParseTimeWhereRFC3339Parts(t *testing.T) {
	tests := map[string]struct {
		in string
		as string // the instant's form that time.Parse takes; "" for none
	}{
		// time-second 00-60: a leap second is the next minute's first.
		"leap second":         {"2016-12-31T23:59:60Z", "2017-01-01T00:00:00Z"},
		"leap second, offset": {"2016-12-31T23:59:60.5-01:00", "2017-01-01T01:00:00.5Z"},
		"leap second, lower":  {"2016-12-31t23:59:60z", "2017-01-01T00:00:00Z"},
		// time-hour 00-23, in an offset too.
		"offset hour 24":  {"2024-01-15T10:30:00+24:00", ""},
		"offset hour -24": {"2024-01-15T10:30:00-24:00", ""},
		// time-minute 00-59, in an offset too: time.Parse reads "+01:60"
		// as +02:00.
		"offset minute 60":           {"2024-01-15T10:30:00+01:60", ""},
		"offset minute 60, fraction": {"2024-01-15T10:30:00.123-05:60", ""},
		"offset minute 60, lower":    {"2024-01-15t10:30:00+00:60", ""},
		"offset minute 59":           {"2024-01-15T10:30:00+01:59", "2024-01-15T08:31:00Z"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := parseTime(tt.in)
			if ok != (tt.as != "") {
				t.Fatalf("parseTime(%q) ok = %v, want %v", tt.in, ok, tt.as != "")
			}
			if !ok {
				return
			}
			want, err := time.Parse(time.RFC3339, tt.as)
			if err != nil {
				t.Fatal(err)
			}
			if got != instantOf(want) {
				t.Errorf("parseTime(%q) = %v, want %v", tt.in, got, instantOf(want))
			}
		})
	}
}

func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"2024-01-15T10:30:00Z", "2024-01-15T10:30:00.5+05:30", "0001-12-31T23:59:59-23:59", "2024-02-29T00:00:00Z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseRFC3339Fast(s)
		if !ok {
			return
		}
		// The fast path may reject what time.Parse takes, never the
		// reverse, but for a leap second: the next minute's first second.
		ref, leap := s, s[17:19] == "60"
		if leap {
			ref = s[:17] + "59" + s[19:]
		}
		want, err := time.Parse(time.RFC3339, ref)
		if err != nil {
			t.Fatalf("parseRFC3339Fast(%q) accepted what time.Parse rejects: %v", s, err)
		}
		if leap {
			want = want.Add(time.Second)
		}
		if got != instantOf(want) {
			t.Fatalf("parseRFC3339Fast(%q) = %v, want %v", s, got, instantOf(want))
		}
	})
}

func TestYearTable(t *testing.T) {
	if got := daysFromCivil(yearTableFirst, 1, 1); got != yearTableEpoch {
		t.Errorf("yearTableEpoch = %d, want %d", yearTableEpoch, got)
	}
	for i, e := range yearTable {
		y := yearTableFirst + int64(i)
		if got := int64(e>>1) + yearTableEpoch; got != daysFromCivil(y, 1, 1) {
			t.Fatalf("yearTable[%d] = %d days, want %d", y, got, daysFromCivil(y, 1, 1))
		}
		if leap := e&1 == 1; leap != (daysIn(2, y) == 29) {
			t.Fatalf("yearTable[%d] leap = %v", y, leap)
		}
	}
}

func TestParseTimeMatchesTimePackage(t *testing.T) {
	// Every day of a few centuries, at varied times and offsets.
	start := time.Date(1890, 1, 1, 0, 0, 0, 0, time.UTC)
	zones := []*time.Location{time.UTC, time.FixedZone("", 5*3600+1800), time.FixedZone("", -8*3600)}
	for d := 0; d < 450*366; d += 11 {
		tm := start.AddDate(0, 0, d).Add(time.Duration(d%86400) * time.Second).Add(time.Duration(d%1000) * time.Millisecond)
		s := tm.In(zones[d%len(zones)]).Format(time.RFC3339Nano)
		got, ok := parseRFC3339Fast(s)
		if !ok || got != instantOf(tm) {
			t.Fatalf("parseRFC3339Fast(%q) = %v, %v; want %v", s, got, ok, instantOf(tm))
		}
	}
}

// TestInLargeLists checks in and not_in with lists long enough to be
// looked up rather than scanned (numbers, arrays and objects), against
// scalar and array fields: equal numbers by value (-0 is 0), objects
// whatever their key order and null members, arrays element by element.
func TestInLargeLists(t *testing.T) {
	list := []any{-0.0, 1e300, 2.5, []any{"a", 1.0, nil}, map[string]any{"k": 1.0, "j": []any{true}}}
	for i := range 40 {
		list = append(list, float64(1000+i), map[string]any{"n": float64(i)}, []any{float64(i)})
	}
	in := MustCompile(Criteria{Include: []Criterion{cr("f", OpIn, list)}})
	notIn := MustCompile(Criteria{Include: []Criterion{cr("f", OpNotIn, list)}})
	tests := []struct {
		v    any
		want bool
	}{
		{0.0, true}, {math.Copysign(0, -1), true}, {1e300, true}, {2.5, true}, {1039.0, true}, {json.Number("1001"), true},
		{2.0, false}, {1040.0, false}, {"2.5", false},
		{[]any{[]any{"a", 1.0, nil}}, true}, {[]any{[]any{"a", 1.0}}, false}, {[]any{[]any{1.0, "a", nil}}, false},
		{map[string]any{"j": []any{true}, "k": 1.0, "x": nil}, true}, {map[string]any{"j": []any{true}}, false},
		{map[string]any{"n": 39.0}, true}, {map[string]any{"n": 40.0}, false}, {[]any{7.0}, false},
		// An array field shares an element with the list.
		{[]any{"x", 3.0, 1020.0}, true}, {[]any{"x", 3.0, []any{12.0}}, true}, {[]any{map[string]any{"n": 3.0}}, true},
		{[]any{"x", 3.0, map[string]any{"n": -1.0}}, false},
	}
	for _, tt := range tests {
		p := NewProfile(pmap{"f": tt.v})
		if got := in.Match(p, testNow); got != tt.want {
			t.Errorf("in: %#v: %t, want %t", tt.v, got, tt.want)
		}
		if got := notIn.Match(p, testNow); got == tt.want {
			t.Errorf("not_in: %#v: %t, want %t", tt.v, got, !tt.want)
		}
		if got := in.Explain(p, testNow).Member; got != tt.want {
			t.Errorf("explain in: %#v: %t, want %t", tt.v, got, tt.want)
		}
	}
}
