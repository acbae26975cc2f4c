package events

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Profile event types.
const (
	ProfileCreated = "profile.created"
	ProfileUpdated = "profile.updated"
	ProfileDeleted = "profile.deleted"
)

// ProfileEvent is a decoded, validated profile change.
type ProfileEvent struct {
	EventID string
	Type    string
	OrgID   string
	UserID  string
	// Version orders one user's events; meaningful only when HasVersion.
	Version    int64
	HasVersion bool
	// OccurredAt is the producer's timestamp, zero when absent.
	OccurredAt time.Time
	// Profile is the whole profile; nil unless the event carries one.
	Profile map[string]any
	// Changes is a patch of dotted paths to new values, nil removing the field;
	// nil unless the event carries one.
	Changes map[string]any
}

// InvalidError says why an input record is not a valid profile event. It is
// permanent: the record goes to the dead-letter topic.
type InvalidError struct {
	Field  string
	Reason string
}

func (e *InvalidError) Error() string {
	if e.Field == "" {
		return "invalid profile event: " + e.Reason
	}
	return "invalid profile event: " + e.Field + ": " + e.Reason
}

// IsInvalid reports whether err marks invalid input rather than a failure.
func IsInvalid(err error) bool {
	var ie *InvalidError
	return errors.As(err, &ie)
}

type profileWire struct {
	EventID    string          `json:"eventId"`
	Type       string          `json:"type"`
	OrgID      string          `json:"orgId"`
	UserID     string          `json:"userId"`
	Version    json.RawMessage `json:"version"`
	OccurredAt string          `json:"occurredAt"`
	// Profile and Changes are decoded in the same pass as the rest: a
	// second pass over them costs a fifth of an event's decoding. Absent
	// and null both leave them nil.
	Profile map[string]any `json:"profile"`
	Changes map[string]any `json:"changes"`
}

// MaxIDLength bounds user and event ids.
const MaxIDLength = 256

// DecodeProfileEvent decodes and validates one input record value. An event
// without eventId gets one derived from its bytes, so that a redelivered copy
// is recognised as the same event.
func DecodeProfileEvent(value []byte) (ProfileEvent, error) {
	var w profileWire
	if err := json.Unmarshal(value, &w); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			switch te.Field {
			case "profile":
				return ProfileEvent{}, &InvalidError{"profile", "must be a JSON object"}
			case "changes":
				return ProfileEvent{}, &InvalidError{"changes", "must be a JSON object of dotted paths"}
			}
		}
		return ProfileEvent{}, &InvalidError{Reason: "not a JSON object: " + err.Error()}
	}
	ev := ProfileEvent{EventID: w.EventID, Type: w.Type, OrgID: w.OrgID, UserID: w.UserID}
	if ev.EventID == "" {
		sum := sha256.Sum256(value)
		ev.EventID = "evt_sha_" + hex.EncodeToString(sum[:12])
	} else if err := checkID("eventId", ev.EventID); err != nil {
		return ProfileEvent{}, err
	}
	if !validOrg(ev.OrgID) {
		return ProfileEvent{}, &InvalidError{"orgId", "required, 1-100 characters of [a-zA-Z0-9_.-]"}
	}
	if err := checkID("userId", ev.UserID); err != nil {
		return ProfileEvent{}, err
	}
	switch ev.Type {
	case ProfileCreated, ProfileUpdated, ProfileDeleted:
	case "":
		return ProfileEvent{}, &InvalidError{"type", "required"}
	default:
		return ProfileEvent{}, &InvalidError{"type", fmt.Sprintf("%q is not profile.created, profile.updated or profile.deleted", ev.Type)}
	}
	if v := bytes.TrimSpace(w.Version); len(v) > 0 && !bytes.Equal(v, []byte("null")) {
		var n json.Number
		if err := json.Unmarshal(v, &n); err != nil {
			return ProfileEvent{}, &InvalidError{"version", "must be a non-negative integer"}
		}
		i, err := n.Int64()
		if err != nil || i < 0 {
			return ProfileEvent{}, &InvalidError{"version", "must be a non-negative integer"}
		}
		ev.Version, ev.HasVersion = i, true
	}
	if w.OccurredAt != "" {
		t, err := time.Parse(time.RFC3339Nano, w.OccurredAt)
		if err != nil {
			return ProfileEvent{}, &InvalidError{"occurredAt", "must be an RFC 3339 time"}
		}
		ev.OccurredAt = t
	}
	hasProfile, hasChanges := w.Profile != nil, w.Changes != nil
	if ev.Type == ProfileDeleted {
		return ev, nil
	}
	switch {
	case hasProfile && hasChanges:
		return ProfileEvent{}, &InvalidError{"profile", "give either profile or changes, not both"}
	case !hasProfile && !hasChanges:
		return ProfileEvent{}, &InvalidError{"profile", "one of profile or changes is required"}
	case hasProfile:
		ev.Profile = w.Profile
	default:
		ev.Changes = w.Changes
		if len(ev.Changes) == 0 {
			return ProfileEvent{}, &InvalidError{"changes", "must not be empty"}
		}
		for path := range ev.Changes {
			if path == "" || strings.HasPrefix(path, ".") || strings.HasSuffix(path, ".") || strings.Contains(path, "..") {
				return ProfileEvent{}, &InvalidError{"changes", fmt.Sprintf("%q is not a dotted path", path)}
			}
		}
	}
	return ev, nil
}

func checkID(field, s string) error {
	if s == "" {
		return &InvalidError{field, "required"}
	}
	if len(s) > MaxIDLength || !utf8.ValidString(s) {
		return &InvalidError{field, fmt.Sprintf("must be valid UTF-8 of at most %d bytes", MaxIDLength)}
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '{' || r == '}' {
			return &InvalidError{field, "must not contain control characters or braces"}
		}
	}
	return nil
}

func validOrg(s string) bool {
	if len(s) == 0 || len(s) > 100 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// EncodeProfileEvent returns the JSON of a profile event, for producers and tests.
func EncodeProfileEvent(ev ProfileEvent) ([]byte, error) {
	type out struct {
		EventID    string         `json:"eventId,omitempty"`
		Type       string         `json:"type"`
		OrgID      string         `json:"orgId"`
		UserID     string         `json:"userId"`
		Version    *int64         `json:"version,omitempty"`
		OccurredAt string         `json:"occurredAt,omitempty"`
		Profile    map[string]any `json:"profile,omitempty"`
		Changes    map[string]any `json:"changes,omitempty"`
	}
	o := out{EventID: ev.EventID, Type: ev.Type, OrgID: ev.OrgID, UserID: ev.UserID, Profile: ev.Profile, Changes: ev.Changes}
	if ev.HasVersion {
		v := ev.Version
		o.Version = &v
	}
	if !ev.OccurredAt.IsZero() {
		o.OccurredAt = ev.OccurredAt.UTC().Format(time.RFC3339Nano)
	}
	return json.Marshal(o)
}
