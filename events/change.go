package events

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Cause types of a membership change, as published in cause.type.
const (
	CauseProfile = "profile"
	CauseSegment = "segment"
	CauseStatic  = "static"
	CauseTime    = "time"
)

// Change directions, as published in change.
const (
	Entered = "entered"
	Exited  = "exited"
)

// Cause says why a membership changed.
type Cause struct {
	// Type is one of CauseProfile, CauseSegment, CauseStatic or CauseTime.
	Type string
	// EventID is the profile event, definition revision or request that caused the change.
	EventID string
	// Version is the profile version that caused the change, 0 when none.
	Version int64
}

// Change is one user entering or leaving one segment.
type Change struct {
	// OrgID is the organisation of the segment and the user.
	OrgID string
	// SegmentID is the segment the user entered or left.
	SegmentID string
	// UserID is the user whose membership changed.
	UserID string
	// Entered is true for an entry and false for an exit.
	Entered bool
	// At is when the change was decided, published in UTC with milliseconds.
	At time.Time
	// Cause says why the membership changed.
	Cause Cause
}

// Direction returns Entered or Exited.
func (c Change) Direction() string {
	if c.Entered {
		return Entered
	}
	return Exited
}

// EventID returns an id that depends only on what changed and why, so that a
// change replayed after a crash carries the same id as the first time.
func (c Change) EventID() string {
	var buf [256]byte
	b := buf[:0]
	for _, part := range [...]string{c.OrgID, c.SegmentID, c.UserID, c.Direction(), c.Cause.Type, c.Cause.EventID} {
		b = append(b, part...)
		b = append(b, 0)
	}
	b = strconv.AppendInt(b, c.Cause.Version, 10)
	sum := sha256.Sum256(b)
	var out [4 + 32]byte
	copy(out[:], "chg_")
	hex.Encode(out[4:], sum[:16])
	return string(out[:])
}

// changeWire is the JSON of a membership-change event on the output topic.
type changeWire struct {
	// EventID is the change's id, from Change.EventID.
	EventID string `json:"eventId"`
	// OrgID is the organisation of the segment and the user.
	OrgID string `json:"orgId"`
	// SegmentID is the segment the user entered or left.
	SegmentID string `json:"segmentId"`
	// UserID is the user whose membership changed.
	UserID string `json:"userId"`
	// Change is Entered or Exited.
	Change string `json:"change"`
	// At is when the change was decided, RFC 3339 in UTC with milliseconds.
	At string `json:"at"`
	// Cause says why the membership changed.
	Cause causeWire `json:"cause"`
}

type causeWire struct {
	// Type is one of the Cause constants.
	Type string `json:"type"`
	// EventID is the event, revision or request that caused the change; left
	// out when empty.
	EventID string `json:"eventId,omitempty"`
	// Version is the profile version that caused the change; left out when 0.
	Version int64 `json:"version,omitempty"`
}

// EncodeChange returns the JSON value of the membership-change event for c.
// It writes the JSON by hand: it runs once per change on the hot path.
func EncodeChange(c Change) []byte {
	b := make([]byte, 0, 256+len(c.Cause.EventID))
	b = append(b, `{"eventId":`...)
	b = appendString(b, c.EventID())
	b = append(b, `,"orgId":`...)
	b = appendString(b, c.OrgID)
	b = append(b, `,"segmentId":`...)
	b = appendString(b, c.SegmentID)
	b = append(b, `,"userId":`...)
	b = appendString(b, c.UserID)
	b = append(b, `,"change":"`...)
	b = append(b, c.Direction()...)
	b = append(b, `","at":"`...)
	b = c.At.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, `","cause":{"type":`...)
	b = appendString(b, c.Cause.Type)
	if c.Cause.EventID != "" {
		b = append(b, `,"eventId":`...)
		b = appendString(b, c.Cause.EventID)
	}
	if c.Cause.Version != 0 {
		b = append(b, `,"version":`...)
		b = strconv.AppendInt(b, c.Cause.Version, 10)
	}
	b = append(b, "}}"...)
	return b
}

// appendString appends s as a JSON string; ids are plain text, so the fast
// path copies it and only unusual bytes take the general encoder.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// DecodedChange is a membership-change event read back from the output topic.
type DecodedChange struct {
	// EventID is the event's id as published.
	EventID string
	// Change is the membership change the event carries.
	Change
}

// DecodeChange parses a membership-change event.
func DecodeChange(b []byte) (DecodedChange, error) {
	var w changeWire
	if err := json.Unmarshal(b, &w); err != nil {
		return DecodedChange{}, fmt.Errorf("decode change event: %w", err)
	}
	at, err := time.Parse(time.RFC3339Nano, w.At)
	if err != nil {
		return DecodedChange{}, fmt.Errorf("decode change event: at: %w", err)
	}
	if w.Change != Entered && w.Change != Exited {
		return DecodedChange{}, fmt.Errorf("decode change event: change %q", w.Change)
	}
	return DecodedChange{EventID: w.EventID, Change: Change{
		OrgID: w.OrgID, SegmentID: w.SegmentID, UserID: w.UserID, Entered: w.Change == Entered, At: at,
		Cause: Cause{Type: w.Cause.Type, EventID: w.Cause.EventID, Version: w.Cause.Version},
	}}, nil
}
