package api

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/segmentd/segmentd/segment"
)

// FuzzDecodeCriteria feeds the API's reader of criteria any JSON: it must
// not panic, a refusal must name a field, and criteria it accepts must come
// back the same through the API's writer (what GET answers) and compile or
// be refused by validation with named fields.
func FuzzDecodeCriteria(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"include":[],"exclude":[]}`,
		`{"include":[{"field":"tier","operator":"in","value":["gold","platinum"]},{"field":"points","operator":">=","value":1000}],"exclude":[{"field":"customFields.test","operator":"equals","value":true}]}`,
		`{"include":[{"field":"a","operator":"equals","value":null}]}`,
		`{"include":[{"field":"a","operator":"exists"}]}`,
		`{"include":[{"field":"updatedAt","operator":"<","value":"now-30d"}]}`,
		`{"include":[{"field":"a","operator":"equals","value":{"x":[1,2.5,"y"]}}]}`,
		`{"include":[{"field":"a","operator":"equals","value":1,"extra":1}]}`,
		`{"include":{"field":"a"}}`,
		`null`,
		`[1]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return // the body's own decoding refuses it first
		}
		var fe fieldErrors
		var over []segment.FieldError
		c, ok := decodeCriteria(&fe, &over, "criteria", raw)
		if !ok {
			if len(fe) == 0 {
				t.Fatalf("%s refused with no field named", raw)
			}
			for _, e := range fe {
				if e.Field == "" || e.Message == "" {
					t.Fatalf("%s refused with an empty field error %+v", raw, e)
				}
			}
			return
		}
		out, err := json.Marshal(criteriaOut(c))
		if err != nil {
			t.Fatalf("%s accepted, then not written: %v", raw, err)
		}
		var again fieldErrors
		back, ok := decodeCriteria(&again, &over, "criteria", out)
		if !ok || !reflect.DeepEqual(back, c) {
			t.Fatalf("%s read as %#v, written as %s, read back as %#v (%v)", raw, c, out, back, again)
		}
		if _, err := segment.Compile(c); err != nil {
			var ve *segment.ValidationError
			if !errors.As(err, &ve) || len(ve.Errors) == 0 || ve.Errors[0].Field == "" {
				t.Fatalf("%s: Compile error %v names no field", raw, err)
			}
		}
		_ = checkCriteriaSize(c)
	})
}
