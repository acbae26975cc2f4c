package api

import (
	"encoding/json"
	"testing"
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
