package events_test

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/loadgen"
)

// marshalProfileEvent is the encoding/json rendering of a profile event,
// the reference for EncodeProfileEvent.
func marshalProfileEvent(ev events.ProfileEvent) ([]byte, error) {
	type out struct {
		EventID    string         `json:"eventId,omitempty"`
		Type       string         `json:"type"`
		OrgID      string         `json:"orgId"`
		UserID     string         `json:"userId"`
		Version    *int64         `json:"version,omitempty"`
		OccurredAt string         `json:"occurredAt,omitempty"`
		Profile    map[string]any `json:"profile,omitzero"`
		Changes    map[string]any `json:"changes,omitzero"`
	}
	o := out{EventID: ev.EventID, Type: ev.Type, OrgID: ev.OrgID, UserID: ev.UserID, Profile: ev.Profile, Changes: ev.Changes}
	if ev.HasVersion {
		o.Version = &ev.Version
	}
	if !ev.OccurredAt.IsZero() {
		o.OccurredAt = ev.OccurredAt.UTC().Format(time.RFC3339Nano)
	}
	return json.Marshal(o)
}

func sameJSON(t *testing.T, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s is not JSON: %v", got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("EncodeProfileEvent = %s\nencoding/json gives %s", got, want)
	}
}

func TestEncodeProfileEventMatchesEncodingJSON(t *testing.T) {
	at := time.Date(2026, 11, 25, 17, 0, 0, 123456789, time.FixedZone("x", 3600))
	tests := map[string]events.ProfileEvent{
		"no optional fields": {Type: events.ProfileDeleted, OrgID: "acme", UserID: "u1"},
		"version zero":       {Type: events.ProfileDeleted, OrgID: "acme", UserID: "u1", Version: 0, HasVersion: true},
		"empty maps":         {EventID: "e", Type: events.ProfileCreated, OrgID: "a", UserID: "u", Profile: map[string]any{}, Changes: map[string]any{}},
		"numbers": {Type: events.ProfileUpdated, OrgID: "a", UserID: "u", OccurredAt: at, Changes: map[string]any{
			"a": 0.1, "b": 1e21, "c": 1e-7, "d": math.Copysign(0, -1), "e": 123456789.0, "f": 1e20, "g": 5e-324, "h": math.MaxFloat64,
			"i": int64(math.MaxInt64), "j": -3, "k": float32(1.5), "l": uint8(7), "m": json.Number("12.50")}},
		"strings": {EventID: "<&>", Type: events.ProfileUpdated, OrgID: "a\"b", UserID: "ü\u2028\x01", Changes: map[string]any{
			"bad utf8": "\xff\xfe", "tab\t": "x\ny", "customFields.a.b": nil}},
		"nesting": {Type: events.ProfileCreated, OrgID: "a", UserID: "u", Profile: map[string]any{
			"badges":       []any{"b0", 1.0, true, nil, []any{}, map[string]any{"z": 1.0, "a": []string{"x", "y"}}},
			"customFields": map[string]any{"vip": map[string]any{"level": "gold"}, "when": at}}},
	}
	g := loadgen.New("acme", 2, 100, 0.1, 0.3, 1)
	for i := range 200 {
		tests["loadgen "+string(rune('a'+i%26))+string(rune('a'+i/26))] = g.Next(at)
	}
	for name, ev := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := events.EncodeProfileEvent(ev)
			if err != nil {
				t.Fatal(err)
			}
			want, err := marshalProfileEvent(ev)
			if err != nil {
				t.Fatal(err)
			}
			sameJSON(t, got, want)
			// Byte for byte, but where encoding/json escapes <, > and & in
			// strings, which the hand encoder leaves as they are.
			if name != "strings" && string(got) != string(want) {
				t.Errorf("EncodeProfileEvent = %s\nencoding/json gives %s", got, want)
			}
			if _, err := events.DecodeProfileEvent(got); err != nil && strings.HasPrefix(name, "loadgen") {
				t.Errorf("%s does not decode: %v", got, err)
			}
		})
	}
}

func TestEncodeProfileEventRejects(t *testing.T) {
	for name, v := range map[string]any{"NaN": math.NaN(), "infinity": math.Inf(-1), "channel": make(chan int), "nested NaN": []any{map[string]any{"x": math.NaN()}}} {
		t.Run(name, func(t *testing.T) {
			ev := events.ProfileEvent{Type: events.ProfileUpdated, OrgID: "a", UserID: "u", Changes: map[string]any{"points": v}}
			if b, err := events.EncodeProfileEvent(ev); err == nil {
				t.Errorf("encoded %s, want an error", b)
			}
		})
	}
}

// BenchmarkEncodeProfileEvent encodes load generator events with the hand
// encoder and, as the baseline, with encoding/json.
func BenchmarkEncodeProfileEvent(b *testing.B) {
	g := loadgen.New("acme", 1, 1000, 0.1, 0.1, 1)
	now := time.Now()
	evs := make([]events.ProfileEvent, 1000)
	for i := range evs {
		evs[i] = g.Next(now)
	}
	for name, enc := range map[string]func(events.ProfileEvent) ([]byte, error){"segmentd": events.EncodeProfileEvent, "encoding-json": marshalProfileEvent} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := enc(evs[i%len(evs)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
