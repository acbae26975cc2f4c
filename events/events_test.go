package events

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecodeProfileEvent(t *testing.T) {
	tests := map[string]struct {
		in        string
		wantField string // empty: valid
		check     func(t *testing.T, ev ProfileEvent)
	}{
		"full profile": {
			in: `{"eventId":"e1","type":"profile.updated","orgId":"acme","userId":"u1","version":17,"occurredAt":"2026-11-25T17:00:00Z","profile":{"points":1200,"customFields":{"vip":true}}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if !ev.HasVersion || ev.Version != 17 || ev.Profile["points"] != 1200.0 || ev.OccurredAt.IsZero() {
					t.Fatalf("%+v", ev)
				}
			},
		},
		"patch with null": {
			in: `{"eventId":"e2","type":"profile.updated","orgId":"acme","userId":"u1","changes":{"points":1300,"customFields.vip":null}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if ev.HasVersion || ev.Changes["points"] != 1300.0 {
					t.Fatalf("%+v", ev)
				}
				if v, ok := ev.Changes["customFields.vip"]; !ok || v != nil {
					t.Fatalf("null removal lost: %+v", ev.Changes)
				}
			},
		},
		"delete without body": {in: `{"eventId":"e3","type":"profile.deleted","orgId":"acme","userId":"u1","version":3}`},
		"integral version written as a float": {
			in: `{"type":"profile.updated","orgId":"acme","userId":"u1","version":1.7e1,"profile":{}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if !ev.HasVersion || ev.Version != 17 {
					t.Fatalf("version %d (%v), want 17", ev.Version, ev.HasVersion)
				}
			},
		},
		"large version in exponent form": {
			in: `{"type":"profile.updated","orgId":"acme","userId":"u1","version":1e16,"profile":{}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if !ev.HasVersion || ev.Version != 10_000_000_000_000_000 {
					t.Fatalf("version %d (%v), want 1e16", ev.Version, ev.HasVersion)
				}
			},
		},
		"unknown field out of float range": {
			in: `{"type":"profile.updated","orgId":"acme","userId":"u1","profile":{},"meta":{"n":[1e400,"x"]}}`,
		},
		"eventId derived": {
			in: `{"type":"profile.created","orgId":"acme","userId":"u1","profile":{}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if ev.EventID != "" {
					t.Fatalf("eventId %q before DeriveID", ev.EventID)
				}
				at := time.UnixMilli(1_700_000_000_000)
				again, other, recreated := ev, ev, ev
				ev.DeriveID("profiles", 2, 41, at)
				again.DeriveID("profiles", 2, 41, at)
				other.DeriveID("profiles", 2, 42, at)
				// The topic deleted and created again: its offsets start over.
				recreated.DeriveID("profiles", 2, 41, at.Add(time.Hour))
				if !strings.HasPrefix(ev.EventID, "evt_rec_") || ev.EventID != again.EventID || ev.EventID == other.EventID || ev.EventID == recreated.EventID {
					t.Fatalf("derived ids %q, %q (same record), %q (next record), %q (same place, later record)", ev.EventID, again.EventID, other.EventID, recreated.EventID)
				}
				given := ProfileEvent{EventID: "e1"}
				if given.DeriveID("profiles", 2, 41, at); given.EventID != "e1" {
					t.Fatalf("DeriveID replaced a given eventId with %q", given.EventID)
				}
			},
		},
		"not json":                    {in: `{"type":`, wantField: ""},
		"missing org":                 {in: `{"type":"profile.created","userId":"u1","profile":{}}`, wantField: "orgId"},
		"org with brace":              {in: `{"type":"profile.created","orgId":"a}b","userId":"u1","profile":{}}`, wantField: "orgId"},
		"missing user":                {in: `{"type":"profile.created","orgId":"acme","profile":{}}`, wantField: "userId"},
		"unknown type":                {in: `{"type":"profile.merged","orgId":"acme","userId":"u1","profile":{}}`, wantField: "type"},
		"both profile/changes":        {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","profile":{},"changes":{"a":1}}`, wantField: "profile"},
		"neither":                     {in: `{"type":"profile.updated","orgId":"acme","userId":"u1"}`, wantField: "profile"},
		"profile not object":          {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","profile":[1]}`, wantField: "profile"},
		"negative version":            {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","version":-1,"profile":{}}`, wantField: "version"},
		"fractional version":          {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","version":1.5,"profile":{}}`, wantField: "version"},
		"huge float version":          {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","version":1e300,"profile":{}}`, wantField: "version"},
		"bad occurredAt":              {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","occurredAt":"yesterday","profile":{}}`, wantField: "occurredAt"},
		"bad path":                    {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","changes":{"a..b":1}}`, wantField: "changes"},
		"empty changes":               {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","changes":{}}`, wantField: "changes"},
		"changes not object":          {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","changes":"points=1"}`, wantField: "changes"},
		"not a string eventId":        {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","profile":{"a":1},"eventId":7}`, wantField: "eventId"},
		"invalid UTF-8 userId":        {in: "{\"type\":\"profile.updated\",\"orgId\":\"acme\",\"userId\":\"u\xff\",\"profile\":{}}", wantField: "userId"},
		"lone surrogate eventId":      {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","eventId":"e\ud800","profile":{}}`, wantField: "eventId"},
		"version of a million digits": {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","version":1.` + strings.Repeat("0", 1_000_000) + `,"profile":{}}`, wantField: "version"},
		"version beyond int64":        {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","version":1e19,"profile":{}}`, wantField: "version"},
		"eventId with braces and spaces": {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","eventId":"{3F2504E0-4F89 11D3}","profile":{}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if ev.EventID != "{3F2504E0-4F89 11D3}" {
					t.Fatalf("eventId %q", ev.EventID)
				}
			}},
		"control character in eventId": {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","eventId":"e\u0000x","profile":{}}`, wantField: "eventId"},
		"lower-case t and z in occurredAt": {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","occurredAt":"2026-11-25t17:00:00.5z","profile":{}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if want := time.Date(2026, 11, 25, 17, 0, 0, 5e8, time.UTC); !ev.OccurredAt.Equal(want) {
					t.Fatalf("occurredAt %v, want %v", ev.OccurredAt, want)
				}
			}},
		"leap second in occurredAt": {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","occurredAt":"2016-12-31t23:59:60.25z","profile":{}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if want := time.Date(2017, 1, 1, 0, 0, 0, 25e7, time.UTC); !ev.OccurredAt.Equal(want) {
					t.Fatalf("occurredAt %v, want %v", ev.OccurredAt, want)
				}
			}},
		"second 61 in occurredAt": {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","occurredAt":"2016-12-31T23:59:61Z","profile":{}}`, wantField: "occurredAt"},
		"repeated fields, the last valid": {in: `{"type":"profile.updated","orgId":"acme","userId":"u\udc00","userId":"u1","version":"3","version":3,"profile":[1],"profile":{"a":1}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if ev.UserID != "u1" || ev.Version != 3 || ev.Profile["a"] != 1.0 {
					t.Fatalf("event %+v", ev)
				}
			}},
		"repeated field, the last null": {in: "{\"type\":\"profile.updated\",\"orgId\":\"acme\",\"userId\":\"u\xff\",\"userId\":null,\"profile\":{}}", wantField: "userId"},
		"repeated eventId, the last null": {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","eventId":"e\ud800","eventId":null,"profile":{}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if ev.EventID != "" {
					t.Fatalf("eventId %q, want none (the last occurrence is null)", ev.EventID)
				}
			}},
		"repeated field, the last invalid": {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","userId":5,"profile":{}}`, wantField: "userId"},
		"not JSON in an unknown field":     {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","profile":{},"meta":[1,]}`, wantField: ""},
		"delete with a profile that is no object": {in: `{"type":"profile.deleted","orgId":"acme","userId":"u1","version":3,"profile":"gone"}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if ev.Type != ProfileDeleted || ev.Profile != nil || ev.Changes != nil {
					t.Fatalf("event %+v, want a deletion without profile or changes", ev)
				}
			}},
		"delete with changes as a list": {in: `{"type":"profile.deleted","orgId":"acme","userId":"u1","version":3,"changes":[]}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if ev.Type != ProfileDeleted || ev.Profile != nil || ev.Changes != nil {
					t.Fatalf("event %+v, want a deletion without profile or changes", ev)
				}
			}},
		"delete with a number out of range in its profile": {in: `{"type":"profile.deleted","orgId":"acme","userId":"u1","profile":{"points":1e400}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if ev.Type != ProfileDeleted || ev.Profile != nil || ev.Changes != nil {
					t.Fatalf("event %+v, want a deletion without profile or changes", ev)
				}
			}},
		// userId is a string in every profile, new user or stored: a value
		// set through it is refused whatever the state it would meet.
		"null below userId is a no-op": {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","changes":{"userId.x":null,"tier":"gold"}}`,
			check: func(t *testing.T, ev ProfileEvent) {
				if ev.Changes["tier"] != "gold" {
					t.Fatalf("changes %v", ev.Changes)
				}
			}},
		"path through userId":              {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","changes":{"userId.x":1,"tier":"gold"}}`, wantField: "changes"},
		"not a profile in range":           {in: `{"type":"profile.updated","orgId":"acme","userId":"u1","profile":{"points":1e400}}`, wantField: "profile"},
		"not JSON in a deletion's profile": {in: `{"type":"profile.deleted","orgId":"acme","userId":"u1","profile":{"points":}}`, wantField: ""},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			ev, err := DecodeProfileEvent([]byte(tt.in))
			invalid := tt.wantField != "" || tt.check == nil && strings.HasPrefix(name, "not")
			if invalid {
				var ie *InvalidError
				if err == nil || !IsInvalid(err) {
					t.Fatalf("err = %v, want InvalidError", err)
				}
				if ie, _ = err.(*InvalidError); ie.Field != tt.wantField {
					t.Fatalf("field = %q, want %q (%v)", ie.Field, tt.wantField, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, ev)
			}
		})
	}
}

func TestChangeRoundTripAndDeterministicID(t *testing.T) {
	c := Change{OrgID: "acme", SegmentID: "seg_1", UserID: "u_42", Entered: true,
		At: time.Date(2026, 11, 25, 17, 0, 0, 123e6, time.UTC), Cause: Cause{Type: CauseProfile, EventID: "evt_1", Version: 17}}
	b := EncodeChange(c)
	if !strings.Contains(string(b), `"at":"2026-11-25T17:00:00.123Z"`) || !strings.Contains(string(b), `"change":"entered"`) {
		t.Fatalf("wire: %s", b)
	}
	d, err := DecodeChange(b)
	if err != nil {
		t.Fatal(err)
	}
	if d.EventID != c.EventID() || d.Change != c {
		t.Fatalf("round trip: %+v vs %+v", d, c)
	}
	later := c
	later.At = c.At.Add(time.Hour) // a replay later carries the same id
	if later.EventID() != c.EventID() {
		t.Fatal("eventId depends on the time of publishing")
	}
	exit := c
	exit.Entered = false
	if exit.EventID() == c.EventID() {
		t.Fatal("entered and exited share an id")
	}
}

func TestEncodeChangeEscapes(t *testing.T) {
	for name, user := range map[string]string{"quote": `u"1`, "backslash": `u\1`, "unicode": "ü_42", "plain": "u_42"} {
		t.Run(name, func(t *testing.T) {
			c := Change{OrgID: "acme", SegmentID: "seg_1", UserID: user, At: time.Unix(0, 0), Cause: Cause{Type: CauseStatic, EventID: "static:x"}}
			b := EncodeChange(c)
			d, err := DecodeChange(b)
			if err != nil {
				t.Fatalf("%s: %v", b, err)
			}
			if d.UserID != user || d.EventID != c.EventID() || d.Cause != c.Cause {
				t.Fatalf("round trip of %s: %+v", b, d)
			}
		})
	}
}

func BenchmarkDecodeProfileEvent(b *testing.B) {
	cases := map[string]string{
		"patch":   `{"eventId":"evt_7f3a","type":"profile.updated","orgId":"acme","userId":"u_8f14e45f","version":12,"occurredAt":"2026-11-25T17:00:00.123Z","changes":{"points":1100,"updatedAt":"2026-11-25T17:00:00Z","customFields.f7":60}}`,
		"profile": `{"eventId":"evt_7f3b","type":"profile.updated","orgId":"acme","userId":"u_8f14e45f","version":13,"occurredAt":"2026-11-25T17:00:00.123Z","profile":{"tier":"gold","points":1500,"xp":12000,"coins":250,"badges":["b0","b1","b2"],"email":"ada@example.com","createdAt":"2023-01-10T08:00:00Z","updatedAt":"2024-01-15T10:30:00.123Z","customFields":{"vip":{"level":"gold"},"region":"eu","cohort":7}}}`,
	}
	for name, v := range cases {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodeProfileEvent([]byte(v)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestOutOfRangeNumberReasonNamesField checks that an event whose profile
// or changes is a JSON object holding a number beyond float64's range (valid
// JSON) is dead-lettered with a reason that names the field and the number,
// not one saying the record is no JSON object: an operator reading the DLQ
// header must be able to tell what to repair.
func TestOutOfRangeNumberReasonNamesField(t *testing.T) {
	for field, in := range map[string]string{
		"profile": `{"type":"profile.updated","orgId":"acme","userId":"u1","version":2,"profile":{"points":1e400}}`,
		"changes": `{"type":"profile.updated","orgId":"acme","userId":"u1","version":2,"changes":{"customFields.score":-1e400}}`,
	} {
		_, err := DecodeProfileEvent([]byte(in))
		var ie *InvalidError
		if !errors.As(err, &ie) {
			t.Fatalf("%s: err = %v, want an InvalidError", field, err)
		}
		if ie.Field != field {
			t.Errorf("%s: reason %q names field %q, want %q", field, err, ie.Field, field)
		}
		if strings.Contains(err.Error(), "not a JSON object") {
			t.Errorf("%s: reason %q says the record is no JSON object; it is one", field, err)
		}
		if !strings.Contains(err.Error(), "1e400") {
			t.Errorf("%s: reason %q does not quote the number out of range", field, err)
		}
	}
}

// TestBlankUserIDReasonSaysBlank checks that an event whose userId is not
// empty but only white space (" ", a no-break space) is dead-lettered with
// a reason that says so: "must not be empty" sends whoever reads the DLQ
// header looking for a missing field in a record that has one.
func TestBlankUserIDReasonSaysBlank(t *testing.T) {
	for _, id := range []string{` `, `\u00a0`, `\u3000 `} {
		in := `{"type":"profile.updated","orgId":"acme","userId":"` + id + `","changes":{"points":1}}`
		_, err := DecodeProfileEvent([]byte(in))
		var ie *InvalidError
		if !errors.As(err, &ie) || ie.Field != "userId" {
			t.Fatalf("%s: err = %v, want an InvalidError on userId", in, err)
		}
		if !strings.Contains(ie.Reason, "white space") {
			t.Errorf("%s: reason %q does not say the id is only white space", in, err)
		}
	}
}
