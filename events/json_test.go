package events

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// FuzzJSONValue checks jsonReader against encoding/json: the same documents
// accepted, and the same values read from them.
func FuzzJSONValue(f *testing.F) {
	for _, s := range []string{
		`{"a":[1,-0,2.5e3,1E-2,true,false,null,"x"],"b":{"c":{}},"":[]}`,
		`"esc\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00\ud800\u0041\udc00"`,
		"\"raw \xff\xfe bytes and é\"",
		`123456789012345`, `1234567890123456789`, `-9007199254740993`, `1e400`, `1e-400`, `0.1`,
		`01`, `1.`, `-`, `.5`, `1e`, `[1,]`, `{"a":1,}`, `{"a" 1}`, `tru`, `nul`, "\"ctl\x01\"", `"\u12"`, `"\x"`,
		` [ {"a" : [ ] } , "" ] `, `{"a":1}{}`, `{"a":1,"a":2}`, strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want any
		wantErr := json.Unmarshal(b, &want)
		r := jsonReader{b: string(b)}
		got, err := r.value()
		if err == nil {
			err = r.end()
		}
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("%q: error %v, encoding/json's %v", b, err, wantErr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: read %#v, encoding/json %#v", b, got, want)
		}
	})
}

// FuzzDecodeProfileEvent checks that any input decodes or is reported
// invalid without panicking, and that a decoded event encodes back to
// itself.
func FuzzDecodeProfileEvent(f *testing.F) {
	for _, s := range []string{
		`{"eventId":"e1","type":"profile.updated","orgId":"acme","userId":"u1","version":17,"occurredAt":"2026-11-25T17:00:00Z","profile":{"points":1200,"customFields":{"vip":true}}}`,
		`{"type":"profile.updated","orgId":"acme","userId":"u1","changes":{"points":1300,"customFields.vip":null},"extra":[1,{"x":2}]}`,
		`{"type":"profile.deleted","orgId":"acme","userId":"u1","version":null,"eventId":null}`,
		`{"type":"profile.created","orgId":"acme","userId":"u1","profile":{"a":1},"profile":null,"changes":{"b":2}}`,
		`null`, `[]`, `{"type":7}`, `{"version":"1"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := DecodeProfileEvent(b)
		if err != nil {
			if !IsInvalid(err) {
				t.Fatalf("%q: error %v is not an InvalidError", b, err)
			}
			return
		}
		again, err := EncodeProfileEvent(ev)
		if err != nil {
			t.Fatalf("%+v does not encode: %v", ev, err)
		}
		ev2, err := DecodeProfileEvent(again)
		if err != nil {
			t.Fatalf("%s (from %q) does not decode: %v", again, b, err)
		}
		if !ev2.OccurredAt.Equal(ev.OccurredAt) {
			t.Fatalf("occurredAt %v became %v", ev.OccurredAt, ev2.OccurredAt)
		}
		ev2.OccurredAt = ev.OccurredAt
		if !reflect.DeepEqual(ev2, ev) {
			t.Fatalf("%q decodes to %+v, which encodes as %s and decodes to %+v", b, ev, again, ev2)
		}
	})
}
