package api

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/segmentd/segmentd/segment"
)

func TestLossyJSON(t *testing.T) {
	for name, tc := range map[string]struct {
		in    string
		lossy bool
	}{
		"plain":                     {`["u1","ü"]`, false},
		"escapes":                   {`"a\"b\\c\n\u00e9"`, false},
		"surrogate pair":            {`"e\ud83d\ude00"`, false},
		"escaped backslash, then u": {`"\\ud800"`, false},
		"invalid byte":              {"\"u\xff\"", true},
		"lone high surrogate":       {`"v\ud800"`, true},
		"lone high at the end":      {`"\ud800"`, true},
		"high then not low":         {`"\ud800\u0041"`, true},
		"lone low surrogate":        {`"x\udc00y"`, true},
		"two highs":                 {`"\ud800\ud800"`, true},
		"nested":                    {`{"a":[{"b":"\udfff"}]}`, true},
	} {
		t.Run(name, func(t *testing.T) {
			if !json.Valid([]byte(tc.in)) {
				t.Fatalf("%q is not JSON", tc.in)
			}
			if got := lossyJSON(json.RawMessage(tc.in)); got != tc.lossy {
				t.Errorf("lossyJSON(%q) = %v, want %v", tc.in, got, tc.lossy)
			}
		})
	}
}

// TestDecodeStringsReportsElementsByIndex checks that a list of user ids
// with elements that are not strings names each of them by its index,
// nested arrays and objects included, and that one of millions of such
// elements is answered with the first of them, not with a detail for each.
func TestDecodeStringsReportsElementsByIndex(t *testing.T) {
	var fe fieldErrors
	ids, ok := decodeStrings(&fe, "userIds", json.RawMessage(`["a", 1, {"x": [1, "]"]}, null, "b\"]", [[]], "c"]`))
	if ok || ids != nil {
		t.Errorf("decodeStrings = %q, %v; want nil, false", ids, ok)
	}
	var fields []string
	for _, d := range fe {
		fields = append(fields, d.Field)
	}
	if want := []string{"userIds[1]", "userIds[2]", "userIds[3]", "userIds[5]"}; !slices.Equal(fields, want) {
		t.Errorf("fields = %q, want %q", fields, want)
	}

	fe = nil
	ids, ok = decodeStrings(&fe, "userIds", json.RawMessage(`[" a", "b\\", "\"c\"", ""]`))
	if !ok || !slices.Equal(ids, []string{" a", `b\`, `"c"`, ""}) || len(fe) != 0 {
		t.Errorf("decodeStrings = %q, %v, %v", ids, ok, fe)
	}

	fe = nil
	raw := "[" + strings.Repeat("0,", 1_000_000) + "0]"
	if _, ok := decodeStrings(&fe, "userIds", json.RawMessage(raw)); ok {
		t.Fatal("a list of numbers decoded")
	}
	if len(fe) != maxDetails+1 || fe[0].Field != "userIds[0]" || fe[maxDetails].Message != moreDetails {
		t.Errorf("%d details, first %+v, last %+v; want %d, ending with %q", len(fe), fe[0], fe[len(fe)-1], maxDetails+1, moreDetails)
	}
}

// TestDecodeCriteriaOfTooManyItems checks that a list of more criteria
// than a segment may have is counted and answered with its limit, with the
// count, and that none of its items is decoded.
func TestDecodeCriteriaOfTooManyItems(t *testing.T) {
	var fe fieldErrors
	var over []segment.FieldError
	raw := `{"include": [` + strings.Repeat(`{"field": "a", "operator": "exists", "x": ["{"]}, 0, "s", `, 400_000) + `[]],
		"exclude": [{"field": "a", "operator": "exists"}]}`
	c, ok := decodeCriteria(&fe, &over, "criteria", json.RawMessage(raw))
	if !ok || len(fe) != 0 {
		t.Errorf("decodeCriteria: ok %v, errors %v; want the limit alone", ok, fe)
	}
	want := []segment.FieldError{{Field: "criteria.include", Message: "at most 20 include criteria are allowed, got 1200001"}}
	if !slices.Equal(over, want) {
		t.Errorf("over = %+v, want %+v", over, want)
	}
	if len(c.Include) != 0 || len(c.Exclude) != 1 {
		t.Errorf("criteria = %+v", c)
	}
	for _, tc := range []struct {
		in   string
		want int
	}{{`[]`, 0}, {`[ ]`, 0}, {`[1]`, 1}, {`[ "a,b" , {"c": [1, 2]}, [[3]], null ]`, 4}, {`["\"", "\\"]`, 2}} {
		if got := arrayLen(json.RawMessage(tc.in)); got != tc.want {
			t.Errorf("arrayLen(%s) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// TestFieldErrorsAreBounded checks that an answer lists at most maxDetails
// problems and says that more were left out.
func TestFieldErrorsAreBounded(t *testing.T) {
	obj := map[string]json.RawMessage{}
	for i := range 10_000 {
		obj[fmt.Sprint("k", i)] = json.RawMessage("0")
	}
	var fe fieldErrors
	checkKeys(&fe, "", obj, map[string]bool{}, nil)
	if len(fe) != maxDetails+1 || fe[maxDetails].Message != moreDetails {
		t.Errorf("%d details, last %+v", len(fe), fe[len(fe)-1])
	}
}
