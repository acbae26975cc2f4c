package events

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/segmentd/segmentd/segment"
)

// Profile event types.
const (
	ProfileCreated = "profile.created"
	ProfileUpdated = "profile.updated"
	ProfileDeleted = "profile.deleted"
)

// ProfileEvent is a decoded, validated profile change.
type ProfileEvent struct {
	// EventID is the event's eventId; empty when the event has none, until
	// DeriveID gives it one.
	EventID string
	// Type is ProfileCreated, ProfileUpdated or ProfileDeleted.
	Type string
	// OrgID is the organisation the user belongs to.
	OrgID string
	// UserID is the user whose profile changed.
	UserID string
	// Version orders one user's events; meaningful only when HasVersion.
	Version int64
	// HasVersion reports whether the event carries a version.
	HasVersion bool
	// OccurredAt is the producer's timestamp, zero when absent.
	OccurredAt time.Time
	// Profile is the whole profile; nil unless the event carries one.
	Profile map[string]any
	// Changes is a patch of dotted paths to new values, nil removing the field;
	// nil unless the event carries one.
	Changes map[string]any
}

// DeriveID gives an event without eventId one derived from where its record
// is (topic, partition, offset) and the record's timestamp (zero when it
// has none): a redelivered copy of the record is recognised as the same
// event, while the same bytes produced again later (a repeated patch with
// no version) are another event, whose membership changes get eventIds of
// their own. The timestamp tells apart the records of a topic deleted and
// created again, whose offsets start over.
func (e *ProfileEvent) DeriveID(topic string, partition int, offset int64, at time.Time) {
	if e.EventID != "" {
		return
	}
	b := make([]byte, 0, len(topic)+40)
	b = append(b, topic...)
	b = append(b, 0)
	b = strconv.AppendInt(b, int64(partition), 10)
	b = append(b, 0)
	b = strconv.AppendInt(b, offset, 10)
	if !at.IsZero() {
		b = append(b, 0)
		b = strconv.AppendInt(b, at.UnixMilli(), 10)
	}
	sum := sha256.Sum256(b)
	e.EventID = "evt_rec_" + hex.EncodeToString(sum[:12])
}

// InvalidError says why an input record is not a valid profile event. It is
// permanent: the record goes to the dead-letter topic.
type InvalidError struct {
	// Field names the event field at fault, empty when the fault is the
	// record as a whole (not a JSON object).
	Field string
	// Reason says what is wrong.
	Reason string
}

// Error names the field and what is wrong with it.
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
	// EventID, Type, OrgID, UserID and OccurredAt are the text of the event's
	// fields of those names, empty when absent.
	EventID, Type, OrgID, UserID, OccurredAt string
	// Version is the number's text; empty when absent or null.
	Version string
	// Profile and Changes are nil when absent, null or not an object.
	Profile, Changes map[string]any
	// ProfileProblem and ChangesProblem say why profile or changes is not
	// an object that can be read (a number past float64's range), nil when
	// it is or is absent: a profile.deleted ignores both fields.
	ProfileProblem, ChangesProblem *InvalidError
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
	// Each known field's problem in its last occurrence (reported in the
	// order the problems were first met): of a repeated field, the last
	// counts, its validity too.
	var problems []*InvalidError
	note := func(field, reason string) {
		for _, p := range problems {
			if p.Field == field {
				p.Reason = reason
				return
			}
		}
		if reason != "" {
			problems = append(problems, &InvalidError{field, reason})
		}
	}
	// wrongType notes a field of the wrong type and reads past its value.
	wrongType := func(field, reason string) error {
		note(field, reason)
		return r.skip()
	}
	err := r.members(func(k string) (err error) {
		c := r.peek()
		note(k, "") // a later occurrence clears an earlier one's problem
		switch k {
		case "eventId", "type", "orgId", "userId", "occurredAt":
			switch c {
			case '"':
				r.lossy = false
				*w.stringField(k), err = r.str()
				// Two different ids must not read as one: an id whose bytes
				// are not valid UTF-8 is refused, not repaired.
				if err == nil && r.lossy && k != "type" && k != "occurredAt" {
					note(k, "must be valid UTF-8 (no invalid bytes or unpaired \\u surrogates)")
				}
			case 'n':
				// Absent, as if not given: not the value, maybe repaired,
				// of an earlier occurrence.
				*w.stringField(k), err = "", r.literal("null")
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
			dst, problem, reason := &w.Profile, &w.ProfileProblem, "must be a JSON object"
			if k == "changes" {
				dst, problem, reason = &w.Changes, &w.ChangesProblem, "must be a JSON object of dotted paths"
			}
			*dst, *problem = nil, nil
			switch c {
			case '{':
				start, depth := r.i, r.depth
				if *dst, err = r.object(); err != nil {
					// A number past float64's range, or malformed JSON,
					// which reading past the value finds again (and which
					// then makes the whole record "not a JSON object"): the
					// problem kept is the number's, in an object that is
					// JSON, and names the field that holds it.
					*dst, *problem = nil, &InvalidError{k, "holds a number out of range: " + err.Error()}
					r.i, r.depth = start, depth
					err = r.skip()
				}
			case 'n':
				err = r.literal("null")
			default:
				*problem = &InvalidError{k, reason}
				err = r.skip()
			}
		default:
			err = r.skip()
		}
		return err
	})
	if err != nil {
		return w, notJSON(err)
	}
	if err := r.end(); err != nil {
		return w, notJSON(err)
	}
	for _, p := range problems {
		if p.Reason != "" {
			return w, p
		}
	}
	return w, nil
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

// maxVersionText bounds a version written other than as plain digits
// (17.0, 1.7e1).
const maxVersionText = 40

// MaxIDLength bounds user and event ids, in bytes.
const MaxIDLength = segment.MaxUserIDLength

// DecodeProfileEvent decodes and validates one input record value. An event
// without eventId is left without one: DeriveID gives it the record's.
func DecodeProfileEvent(value []byte) (ProfileEvent, error) {
	w, err := decodeProfileWire(value)
	if err != nil {
		return ProfileEvent{}, err
	}
	ev := ProfileEvent{EventID: w.EventID, Type: w.Type, OrgID: w.OrgID, UserID: w.UserID}
	if ev.EventID != "" {
		if err := checkEventID(ev.EventID); err != nil {
			return ProfileEvent{}, err
		}
	}
	switch {
	case ev.OrgID == "":
		return ProfileEvent{}, &InvalidError{"orgId", "required"}
	case !ValidOrgID(ev.OrgID):
		return ProfileEvent{}, &InvalidError{"orgId", "must be 1-100 characters of [a-zA-Z0-9_.-]"}
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
		if err != nil {
			// A JSON number may write an integer as 17.0 or 1.7e1; read
			// exactly, so that 1e16 is 10000000000000000 too. A text of
			// more than 40 characters is refused unread: the exact parse
			// costs the square of its length.
			if len(w.Version) <= maxVersionText {
				if f, _, ferr := big.ParseFloat(w.Version, 10, 256, big.ToNearestEven); ferr == nil && f.IsInt() {
					if n, acc := f.Int64(); acc == big.Exact {
						i, err = n, nil
					}
				}
			}
		}
		if err != nil || i < 0 {
			return ProfileEvent{}, &InvalidError{"version", "must be a non-negative integer"}
		}
		ev.Version, ev.HasVersion = i, true
	}
	if w.OccurredAt != "" {
		t, err := parseOccurredAt(w.OccurredAt)
		if err != nil {
			return ProfileEvent{}, &InvalidError{"occurredAt", "must be an RFC 3339 time"}
		}
		ev.OccurredAt = t
	}
	if ev.Type == ProfileDeleted {
		return ev, nil // whatever profile and changes hold
	}
	for _, p := range []*InvalidError{w.ProfileProblem, w.ChangesProblem} {
		if p != nil {
			return ProfileEvent{}, p
		}
	}
	hasProfile, hasChanges := w.Profile != nil, w.Changes != nil
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
		for path, v := range ev.Changes {
			if path == "" || strings.HasPrefix(path, ".") || strings.HasSuffix(path, ".") || strings.Contains(path, "..") {
				return ProfileEvent{}, &InvalidError{"changes", fmt.Sprintf("%q is not a dotted path", path)}
			}
			// userId is the user's own id, a string, in every profile
			// (segment.DecodeUserProfile): a value set below it crosses a
			// non-object whether or not the user is stored yet, so the
			// patch is refused for every user alike, taking no version.
			// Removing (null) below it is a no-op, as below any non-object.
			if v != nil && strings.HasPrefix(path, "userId.") {
				return ProfileEvent{}, &InvalidError{"changes", fmt.Sprintf("%q sets a value through userId, the user's id, which is not an object", path)}
			}
		}
	}
	return ev, nil
}

// checkEventID returns why s cannot be an eventId: at most MaxIDLength
// bytes without control characters (its bytes are joined with NUL between
// fields to make change events' ids). Valid UTF-8 is checked as it is
// read. Braces and spaces are fine: no Redis key is built from it.
func checkEventID(s string) error {
	if len(s) > MaxIDLength {
		return &InvalidError{"eventId", fmt.Sprintf("must be at most %d bytes", MaxIDLength)}
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return &InvalidError{"eventId", "must not contain control characters"}
	}
	return nil
}

// parseOccurredAt parses an RFC 3339 time, whose T and Z RFC 3339
// (section 5.6) lets be lower case, and whose seconds may be a leap second
// (:60, the next minute's first second, as the criteria take it), as
// time.Parse does not. An offset of 24 hours, which time.Parse takes and
// RFC 3339 does not, is taken too: the event is not dead-lettered for it.
func parseOccurredAt(s string) (time.Time, error) {
	if len(s) > 10 && (s[10] == 't' || s[len(s)-1] == 'z') {
		s = strings.ToUpper(s)
	}
	leap := len(s) > 19 && s[13] == ':' && s[16] == ':' && s[17:19] == "60"
	if leap {
		s = s[:17] + "59" + s[19:]
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err == nil && leap {
		t = t.Add(time.Second)
	}
	return t, err
}

func checkID(field, s string) error {
	if s == "" {
		return &InvalidError{field, "required"}
	}
	if why := segment.CheckUserID(s); why != "" {
		return &InvalidError{field, why}
	}
	return nil
}

// ValidOrgID reports whether s can be an event's orgId: 1-100 characters of
// [a-zA-Z0-9_.-].
func ValidOrgID(s string) bool {
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

// EncodeProfileEvent returns the JSON of a profile event, for producers and
// tests. It writes the JSON by hand (a load generator encodes every event
// it sends); values of types other than JSON's own, Go's numbers, []string
// and map[string]any go through encoding/json. The error says which value
// cannot be encoded (NaN, an infinity, a channel).
func EncodeProfileEvent(ev ProfileEvent) ([]byte, error) {
	b := make([]byte, 0, 256)
	b = append(b, '{')
	if ev.EventID != "" {
		b = append(b, `"eventId":`...)
		b = appendString(b, ev.EventID)
		b = append(b, ',')
	}
	b = append(b, `"type":`...)
	b = appendString(b, ev.Type)
	b = append(b, `,"orgId":`...)
	b = appendString(b, ev.OrgID)
	b = append(b, `,"userId":`...)
	b = appendString(b, ev.UserID)
	if ev.HasVersion {
		b = append(b, `,"version":`...)
		b = strconv.AppendInt(b, ev.Version, 10)
	}
	if !ev.OccurredAt.IsZero() {
		b = append(b, `,"occurredAt":"`...)
		b = ev.OccurredAt.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	var err error
	if ev.Profile != nil {
		b = append(b, `,"profile":`...)
		if b, err = appendObject(b, ev.Profile); err != nil {
			return nil, fmt.Errorf("encode profile event: profile: %w", err)
		}
	}
	if ev.Changes != nil {
		b = append(b, `,"changes":`...)
		if b, err = appendObject(b, ev.Changes); err != nil {
			return nil, fmt.Errorf("encode profile event: changes: %w", err)
		}
	}
	return append(b, '}'), nil
}

// appendObject appends m as a JSON object, its keys sorted as
// encoding/json sorts them.
func appendObject(b []byte, m map[string]any) ([]byte, error) {
	var kb [16]string
	keys := kb[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		var err error
		if b, err = appendValue(b, m[k]); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
	}
	return append(b, '}'), nil
}

func appendValue(b []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendString(b, v), nil
	case bool:
		return strconv.AppendBool(b, v), nil
	case int:
		return strconv.AppendInt(b, int64(v), 10), nil
	case int64:
		return strconv.AppendInt(b, v, 10), nil
	case float64:
		return appendFloat(b, v)
	case map[string]any:
		return appendObject(b, v)
	case []any:
		b = append(b, '[')
		for i, e := range v {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendValue(b, e); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	case []string:
		b = append(b, '[')
		for i, e := range v {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, e)
		}
		return append(b, ']'), nil
	}
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, j...), nil
}

// appendFloat formats f as encoding/json does: the shortest representation,
// with an exponent only for very small or very large magnitudes.
func appendFloat(b []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("unsupported number %v", f)
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-07 is e-7, as encoding/json writes it.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}
