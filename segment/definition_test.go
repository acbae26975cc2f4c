package segment

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func validDynamic() Definition {
	return Definition{
		Name: "Engaged VIPs",
		Type: TypeDynamic,
		Criteria: Criteria{
			Include: []Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}},
		},
	}
}

func validStatic() Definition {
	return Definition{Name: "Beta testers", Type: TypeStatic, UserIDs: []string{"u1", "u2"}}
}

func manyCriteria(n int) []Criterion {
	out := make([]Criterion, n)
	for i := range out {
		out[i] = Criterion{Field: fmt.Sprintf("f%d", i), Operator: "exists"}
	}
	return out
}

func manyIDs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("u%d", i)
	}
	return out
}

func TestDefinitionValidate(t *testing.T) {
	tests := map[string]struct {
		def    func() Definition
		code   string   // "" for valid
		fields []string // the fields named, in order
	}{
		"valid dynamic":          {def: validDynamic},
		"valid static":           {def: validStatic},
		"static with empty list": {def: func() Definition { d := validStatic(); d.UserIDs = []string{}; return d }},
		"dynamic matching all":   {def: func() Definition { d := validDynamic(); d.Criteria = Criteria{}; return d }},
		"valid http url":         {def: func() Definition { d := validDynamic(); d.URL = "http://example.com/x?y=1"; return d }},
		"valid https url":        {def: func() Definition { d := validDynamic(); d.URL = "https://example.com"; return d }},
		"valid deep link":        {def: func() Definition { d := validDynamic(); d.URL = "myapp://quiz/1"; return d }},
		"name of 200 characters": {def: func() Definition { d := validDynamic(); d.Name = strings.Repeat("é", 200); return d }},
		"20 include and 20 exclude": {def: func() Definition {
			d := validDynamic()
			d.Criteria = Criteria{Include: manyCriteria(20), Exclude: manyCriteria(20)}
			return d
		}},
		"100000 user ids": {def: func() Definition { d := validStatic(); d.UserIDs = manyIDs(MaxStaticUsers); return d }},
		"100001 ids with a duplicate": {def: func() Definition {
			d := validStatic()
			d.UserIDs = append(manyIDs(MaxStaticUsers), "u0")
			return d
		}},
		"missing name": {
			def:  func() Definition { d := validDynamic(); d.Name = ""; return d },
			code: CodeValidationFailed, fields: []string{"name"},
		},
		"blank name": {
			def:  func() Definition { d := validDynamic(); d.Name = "  \t"; return d },
			code: CodeValidationFailed, fields: []string{"name"},
		},
		"name with a line break": {
			def:  func() Definition { d := validDynamic(); d.Name = "VIP\nsegment"; return d },
			code: CodeValidationFailed, fields: []string{"name"},
		},
		"name with a NUL": {
			def:  func() Definition { d := validDynamic(); d.Name = "VIP\x00"; return d },
			code: CodeValidationFailed, fields: []string{"name"},
		},
		"name with a C1 control": {
			def:  func() Definition { d := validDynamic(); d.Name = "VI\u0085P"; return d },
			code: CodeValidationFailed, fields: []string{"name"},
		},
		"name with a line separator": {
			def:  func() Definition { d := validDynamic(); d.Name = "VIP\u2028segment"; return d },
			code: CodeValidationFailed, fields: []string{"name"},
		},
		"name with a paragraph separator": {
			def:  func() Definition { d := validDynamic(); d.Name = "VIP\u2029segment"; return d },
			code: CodeValidationFailed, fields: []string{"name"},
		},
		"name of 201 characters": {
			def:  func() Definition { d := validDynamic(); d.Name = strings.Repeat("a", 201); return d },
			code: CodeValidationFailed, fields: []string{"name"},
		},
		"description too long": {
			def: func() Definition {
				d := validDynamic()
				d.Description = strings.Repeat("a", MaxDescriptionLength+1)
				return d
			},
			code: CodeValidationFailed, fields: []string{"description"},
		},
		"missing type": {
			def:  func() Definition { d := validDynamic(); d.Type = ""; return d },
			code: CodeValidationFailed, fields: []string{"type"},
		},
		"unknown type": {
			def:  func() Definition { d := validDynamic(); d.Type = "smart"; return d },
			code: CodeValidationFailed, fields: []string{"type"},
		},
		"relative url": {
			def:  func() Definition { d := validDynamic(); d.URL = "/landing"; return d },
			code: CodeValidationFailed, fields: []string{"url"},
		},
		"javascript url": {
			def:  func() Definition { d := validDynamic(); d.URL = "javascript:alert(1)"; return d },
			code: CodeValidationFailed, fields: []string{"url"},
		},
		"url without host": {
			def:  func() Definition { d := validDynamic(); d.URL = "https://"; return d },
			code: CodeValidationFailed, fields: []string{"url"},
		},
		"unknown operator": {
			def: func() Definition {
				d := validDynamic()
				d.Criteria.Include[0].Operator = "equal"
				return d
			},
			code: CodeValidationFailed, fields: []string{"criteria.include[0].operator"},
		},
		"21 include criteria": {
			def:  func() Definition { d := validDynamic(); d.Criteria.Include = manyCriteria(21); return d },
			code: CodeLimitExceeded, fields: []string{"criteria.include"},
		},
		"21 exclude criteria": {
			def:  func() Definition { d := validDynamic(); d.Criteria.Exclude = manyCriteria(21); return d },
			code: CodeLimitExceeded, fields: []string{"criteria.exclude"},
		},
		"limit and a bad name": {
			def: func() Definition {
				d := validDynamic()
				d.Name = ""
				d.Criteria.Include = manyCriteria(21)
				return d
			},
			code: CodeValidationFailed, fields: []string{"name", "criteria.include"},
		},
		"dynamic with user ids": {
			def:  func() Definition { d := validDynamic(); d.UserIDs = []string{"u1"}; return d },
			code: CodeValidationFailed, fields: []string{"userIds"},
		},
		"static with criteria": {
			def: func() Definition {
				d := validStatic()
				d.Criteria = validDynamic().Criteria
				return d
			},
			code: CodeValidationFailed, fields: []string{"criteria"},
		},
		"100001 user ids": {
			def:  func() Definition { d := validStatic(); d.UserIDs = manyIDs(MaxStaticUsers + 1); return d },
			code: CodeLimitExceeded, fields: []string{"userIds"},
		},
		"empty user id": {
			def:  func() Definition { d := validStatic(); d.UserIDs = []string{"u1", "", " "}; return d },
			code: CodeValidationFailed, fields: []string{"userIds[1]", "userIds[2]"},
		},
		"user id no profile event can carry": {
			def: func() Definition {
				d := validStatic()
				d.UserIDs = []string{"a}b", "u1", "tab\there", strings.Repeat("x", MaxUserIDLength+1)}
				return d
			},
			code: CodeValidationFailed, fields: []string{"userIds[0]", "userIds[2]", "userIds[3]"},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			err := tt.def().Validate()
			if tt.code == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate() = %v, want a *ValidationError", err)
			}
			if ve.Code != tt.code {
				t.Errorf("code = %q, want %q (%v)", ve.Code, tt.code, ve)
			}
			var fields []string
			for _, fe := range ve.Errors {
				fields = append(fields, fe.Field)
				if fe.Message == "" {
					t.Errorf("field %s has an empty message", fe.Field)
				}
			}
			if !slices.Equal(fields, tt.fields) {
				t.Errorf("fields = %q, want %q", fields, tt.fields)
			}
		})
	}
}

func TestValidateBoundsReportedErrors(t *testing.T) {
	d := validStatic()
	d.UserIDs = make([]string, 5000) // all empty
	var ve *ValidationError
	if !errors.As(d.Validate(), &ve) {
		t.Fatal("want a *ValidationError")
	}
	if n := len(ve.Errors); n > maxReportedErrors+1 {
		t.Errorf("%d errors reported, want at most %d", n, maxReportedErrors+1)
	}
	last := ve.Errors[len(ve.Errors)-1]
	if !strings.Contains(last.Message, "more errors") {
		t.Errorf("last error = %+v, want a note of the errors left out", last)
	}
}

func TestNormalize(t *testing.T) {
	tests := map[string]struct {
		name    string
		ids     []string
		want    []string
		wantNam string
	}{
		"no duplicates": {name: " a ", ids: []string{"b", "a"}, want: []string{"b", "a"}, wantNam: "a"},
		"duplicates":    {name: "a", ids: []string{"b", "a", "b"}, want: []string{"b", "a", "b"}, wantNam: "a"}, // kept for Validate's indices
		"nil":           {name: "a", ids: nil, want: nil, wantNam: "a"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			d := Definition{Name: tt.name, UserIDs: tt.ids}
			d.Normalize()
			if !slices.Equal(d.UserIDs, tt.want) || (tt.want == nil) != (d.UserIDs == nil) {
				t.Errorf("UserIDs = %q, want %q", d.UserIDs, tt.want)
			}
			if d.Name != tt.wantNam {
				t.Errorf("Name = %q, want %q", d.Name, tt.wantNam)
			}
		})
	}
}

func TestValidateUserIDs(t *testing.T) {
	tests := map[string]struct {
		ids  []string
		code string
	}{
		"fine":      {ids: []string{"a", "b"}},
		"empty":     {ids: []string{"a", ""}, code: CodeValidationFailed},
		"too many":  {ids: manyIDs(MaxStaticUsers + 1), code: CodeLimitExceeded},
		"none":      {ids: nil},
		"exact max": {ids: manyIDs(MaxStaticUsers)},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			err := ValidateUserIDs("add", tt.ids)
			if tt.code == "" {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Code != tt.code {
				t.Fatalf("err = %v, want code %s", err, tt.code)
			}
			if !strings.HasPrefix(ve.Errors[0].Field, "add") {
				t.Errorf("field = %q, want it under add", ve.Errors[0].Field)
			}
		})
	}
}
