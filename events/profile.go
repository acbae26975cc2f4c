package events

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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

// profileWire holds the fields of a profile event as read from JSON.
type profileWire struct {
	EventID, Type, OrgID, UserID, OccurredAt string
	// Version is the number's text; empty when absent or null.
	Version string
	// Profile and Changes are nil when absent or null.
	Profile, Changes map[string]any
}

// decodeProfileWire reads a profile event's fields in one pass. Field names
// are exact; other fields are read (so the document is checked whole) and
// dropped; of a repeated field, the last wins. Malformed JSON is reported
// before a field of the wrong type.
func decodeProfileWire(value []byte) (profileWire, error) {
	var w profileWire
	r := jsonReader{b: string(value)}
	notJSON := func(err error) error { return &InvalidError{Reason: "not a JSON object: " + err.Error()} }
	if c := r.peek(); c != '{' {
		v, err := r.value()
		if err == nil {
			err = r.end()
		}
		switch {
		case err != nil:
			return w, notJSON(err)
		case v == nil:
			return w, nil // null, like encoding/json: an event with no fields
		}
		return w, &InvalidError{Reason: "not a JSON object"}
	}
	var fieldErr error
	// wrongType notes a field of the wrong type and reads past its value.
	wrongType := func(field, reason string) error {
		if fieldErr == nil {
			fieldErr = &InvalidError{field, reason}
		}
		_, err := r.value()
		return err
	}
	err := r.members(func(k string) (err error) {
		c := r.peek()
		switch k {
		case "eventId", "type", "orgId", "userId", "occurredAt":
			switch c {
			case '"':
				*w.stringField(k), err = r.str()
			case 'n':
				err = r.literal("null") // leaves the field as it was
			default:
				err = wrongType(k, "must be a string")
			}
		case "version":
			switch {
			case c == '-' || c >= '0' && c <= '9':
				w.Version, err = r.numberText()
			case c == 'n':
				w.Version, err = "", r.literal("null")
			default:
				err = wrongType(k, "must be a non-negative integer")
			}
		case "profile", "changes":
			dst, reason := &w.Profile, "must be a JSON object"
			if k == "changes" {
				dst, reason = &w.Changes, "must be a JSON object of dotted paths"
			}
			switch c {
			case '{':
				*dst, err = r.object()
			case 'n':
				*dst, err = nil, r.literal("null")
			default:
				err = wrongType(k, reason)
			}
		default:
			_, err = r.value()
		}
		return err
	})
	if err != nil {
		return w, notJSON(err)
	}
	if err := r.end(); err != nil {
		return w, notJSON(err)
	}
	return w, fieldErr
}

// stringField returns the field of w named k, one of the string fields.
func (w *profileWire) stringField(k string) *string {
	switch k {
	case "eventId":
		return &w.EventID
	case "type":
		return &w.Type
	case "orgId":
		return &w.OrgID
	case "userId":
		return &w.UserID
	}
	return &w.OccurredAt
}

// MaxIDLength bounds user and event ids.
const MaxIDLength = 256

// DecodeProfileEvent decodes and validates one input record value. An event
// without eventId gets one derived from its bytes, so that a redelivered copy
// is recognised as the same event.
func DecodeProfileEvent(value []byte) (ProfileEvent, error) {
	w, err := decodeProfileWire(value)
	if err != nil {
		return ProfileEvent{}, err
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
	if w.Version != "" {
		i, err := strconv.ParseInt(w.Version, 10, 64)
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
		Profile    map[string]any `json:"profile,omitzero"`
		Changes    map[string]any `json:"changes,omitzero"`
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
