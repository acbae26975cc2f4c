package segment

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Type is the kind of a segment: dynamic segments are computed from criteria,
// static segments hold a fixed list of user ids.
type Type string

// The segment types.
const (
	// TypeStatic is a segment holding a fixed list of user ids.
	TypeStatic Type = "static"
	// TypeDynamic is a segment whose members are the users matching its criteria.
	TypeDynamic Type = "dynamic"
)

// Status is the state of a segment's membership.
type Status string

// The segment statuses.
const (
	// StatusBuilding means that a dynamic segment's membership is being
	// computed, at creation or after its criteria changed.
	StatusBuilding Status = "building"
	// StatusReady means that the segment's membership is complete.
	StatusReady Status = "ready"
	// StatusDeleting marks a segment whose deletion has begun: its
	// membership is being removed. Such a segment is never shown to API
	// clients and is not evaluated by the processor.
	StatusDeleting Status = "deleting"
)

// Limits of segment definitions.
const (
	// MaxSegmentsPerOrg is the most segments one organisation may have.
	MaxSegmentsPerOrg = 1000
	// MaxStaticUsers is the most user ids a static segment may hold.
	MaxStaticUsers = 100000
	// MaxNameLength is the most characters of a segment's name.
	MaxNameLength = 200
	// MaxDescriptionLength is the most characters of a segment's description.
	MaxDescriptionLength = 2000
	// MaxURLLength is the most bytes of a segment's url.
	MaxURLLength = 2048
)

// maxReportedErrors bounds the field errors that Validate lists, so that a
// list of 100,000 bad user ids does not produce an answer as large.
const maxReportedErrors = 100

// MaxUnfinishedBackfills bounds the older generations whose unpublished
// changes a backfill looks for (Definition.BackfillEarlier): criteria that
// change more often than that while no backfill can publish leave the
// oldest generations' changes unlooked for.
const MaxUnfinishedBackfills = 16

// Definition is a segment as the domain knows it: its identity, descriptive
// fields, and either criteria (dynamic) or a list of user ids (static).
type Definition struct {
	// ID is the segment id, "seg_" followed by a time-sortable suffix.
	ID string
	// OrgID is the organisation that owns the segment.
	OrgID string
	// Name is the segment's display name; it is required.
	Name string
	// Description is free text.
	Description string
	// URL optionally links to an external resource; it is informational only.
	URL string
	// Type is TypeStatic or TypeDynamic.
	Type Type
	// Criteria decide the membership of a dynamic segment.
	Criteria Criteria
	// UserIDs is the list of a static segment. Stores may leave it empty when
	// the list lives elsewhere (for example in the membership set).
	UserIDs []string
	// Status is StatusBuilding, StatusReady or StatusDeleting.
	Status Status
	// EstimatedSize approximates the number of members: 0 at creation,
	// static and dynamic alike, then refreshed in the background.
	EstimatedSize int64
	// BackfillScanned is how many stored users the backfill of the current
	// generation has evaluated so far; it means something only while the
	// segment is building.
	BackfillScanned int64
	// BackfillStarted is the generation whose backfill has begun writing
	// and not ended cleanly (ready, or stopped by a change with everything
	// it wrote published), 0 when none: a backfill tells its first attempt
	// from a retry by it, and the backfill of a new generation finds the
	// changes an unfinished older one may have left unpublished.
	BackfillStarted int64
	// BackfillEarlier are the older generations, oldest first, whose
	// backfills had begun and not ended cleanly when the current
	// generation's began (at most MaxUnfinishedBackfills, the newest):
	// every attempt of the current generation's backfill looks for the
	// changes those may have left unpublished.
	BackfillEarlier []int64
	// Generation is bumped whenever the criteria (or the static list)
	// change, so that work computed for older criteria, such as a backfill,
	// can tell that it is stale and must not mark the segment ready.
	Generation int64
	// CreatedAt is when the segment was created.
	CreatedAt time.Time
	// UpdatedAt is when the segment was last changed.
	UpdatedAt time.Time
}

// CreateUnfinished reports whether the segment is a static one whose create
// has not finished writing its list: its instance may have been killed
// part way, with users holding the segment in their own set that the
// member set does not name.
func (d Definition) CreateUnfinished() bool {
	return d.Type == TypeStatic && d.Status == StatusBuilding
}

// BackfillUnfinished reports whether a backfill of the segment has begun
// writing and not ended cleanly (its instance may have been killed): users
// it changed may then hold the segment in their own set without its member
// set naming them.
func (d Definition) BackfillUnfinished() bool {
	return d.Type == TypeDynamic && (d.BackfillStarted != 0 || len(d.BackfillEarlier) > 0)
}

// Normalize trims the name. It changes nothing else: user ids keep their
// duplicates until after Validate, whose errors name ids by their index in
// the list as given; DedupUserIDs removes them then.
func (d *Definition) Normalize() {
	d.Name = strings.TrimSpace(d.Name)
}

// DedupUserIDs returns ids without duplicates, in the order of their first
// occurrence. It returns ids itself when there is no duplicate.
func DedupUserIDs(ids []string) []string {
	// Sized for the ids a list may hold, not for every id given: a list
	// of millions of repeats of a few ids is a few ids.
	n := min(len(ids), MaxStaticUsers+1)
	seen := make(map[string]struct{}, n)
	dup := false
	for _, id := range ids {
		if _, ok := seen[id]; ok {
			dup = true
			break
		}
		seen[id] = struct{}{}
	}
	if !dup {
		return ids
	}
	clear(seen)
	out := make([]string, 0, n)
	for _, id := range ids {
		if _, ok := seen[id]; ok {
			continue
		}
		seen[id] = struct{}{}
		out = append(out, id)
	}
	return out
}

// Validate checks the definition's client-supplied fields: the name, the
// description, the url, the type and, by type, the criteria or the user ids.
// It returns nil or a *ValidationError listing the problems, located by
// their field in the API's JSON (for example "criteria.include[0].operator").
// The code is CodeLimitExceeded when every problem is an exceeded limit, and
// CodeValidationFailed otherwise. Validate counts distinct user ids, so call
// Normalize first to store them without duplicates. It performs no I/O.
func (d Definition) Validate() error {
	var v validator

	name := strings.TrimSpace(d.Name)
	switch {
	case name == "":
		v.fail("name", "name is required")
	case utf8.RuneCountInString(name) > MaxNameLength:
		v.fail("name", fmt.Sprintf("name must be at most %d characters", MaxNameLength))
	case strings.ContainsFunc(name, func(r rune) bool { return unicode.In(r, unicode.Cc, unicode.Zl, unicode.Zp) }):
		// A name is one line of a dashboard or a log.
		v.fail("name", "name must not contain control characters or line breaks (tabs, U+0000-U+001F, U+007F-U+009F, U+2028, U+2029)")
	}
	if utf8.RuneCountInString(d.Description) > MaxDescriptionLength {
		v.fail("description", fmt.Sprintf("description must be at most %d characters", MaxDescriptionLength))
	}
	if d.URL != "" {
		if msg := checkURL(d.URL); msg != "" {
			v.fail("url", msg)
		}
	}

	switch d.Type {
	case TypeDynamic:
		if len(d.UserIDs) > 0 {
			v.fail("userIds", "userIds are only allowed for static segments")
		}
		if _, err := Compile(d.Criteria); err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) {
				v.fail("criteria", err.Error())
				break
			}
			for _, fe := range ve.Errors {
				v.add(fe, ve.Code == CodeLimitExceeded)
			}
		}
	case TypeStatic:
		if len(d.Criteria.Include) > 0 || len(d.Criteria.Exclude) > 0 {
			v.fail("criteria", "criteria are only allowed for dynamic segments")
		}
		v.userIDs(d.UserIDs)
	case "":
		v.fail("type", `type is required: "static" or "dynamic"`)
	default:
		v.fail("type", fmt.Sprintf(`unknown type %q: want "static" or "dynamic"`, string(d.Type)))
	}
	return v.err()
}

// ValidateUserIDs checks a list of user ids of a static segment: every id
// must be non-blank, and there must be at most MaxStaticUsers distinct ids.
// field names the list in error messages, such as "userIds" or "add". It
// returns nil or a *ValidationError.
func ValidateUserIDs(field string, ids []string) error {
	var v validator
	v.userIDsAt(field, ids)
	return v.err()
}

// validator collects field errors and remembers whether any of them is
// something other than an exceeded limit.
type validator struct {
	errs      []FieldError
	invalid   bool
	dropped   int
	droppedAt string
}

func (v *validator) add(fe FieldError, limit bool) {
	if !limit {
		v.invalid = true
	}
	if len(v.errs) >= maxReportedErrors {
		if v.dropped == 0 {
			v.droppedAt = fe.Field
		}
		v.dropped++
		return
	}
	v.errs = append(v.errs, fe)
}

func (v *validator) fail(field, msg string) { v.add(FieldError{Field: field, Message: msg}, false) }

func (v *validator) limit(field, msg string) { v.add(FieldError{Field: field, Message: msg}, true) }

func (v *validator) userIDs(ids []string) { v.userIDsAt("userIds", ids) }

// MaxUserIDLength bounds user ids, in bytes.
const MaxUserIDLength = 256

// CheckUserID returns why s cannot be a user id, or "": a user id is
// valid UTF-8 of 1 to MaxUserIDLength bytes, not only white space, with no ASCII control characters
// (U+0000-U+001F, U+007F) and no braces (Redis hash tags are built from it). Profile events and static
// lists take the same ids.
func CheckUserID(s string) string {
	if s == "" {
		return "must not be empty"
	}
	if strings.TrimSpace(s) == "" {
		return "must not be only white space"
	}
	if len(s) > MaxUserIDLength || !utf8.ValidString(s) {
		return fmt.Sprintf("must be valid UTF-8 of at most %d bytes", MaxUserIDLength)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '{' || r == '}' {
			return "must not contain control characters or braces"
		}
	}
	return ""
}

// userIDsAt checks the ids of the list named field.
func (v *validator) userIDsAt(field string, ids []string) {
	for i, id := range ids {
		if why := CheckUserID(id); why != "" {
			v.fail(fmt.Sprintf("%s[%d]", field, i), "user id "+why)
		}
	}
	if len(ids) <= MaxStaticUsers {
		return
	}
	// Repeated ids count once; counting stops past the limit, so that a
	// list far over it costs no more than one at it.
	seen := make(map[string]struct{}, MaxStaticUsers+1)
	for _, id := range ids {
		seen[id] = struct{}{}
		if len(seen) > MaxStaticUsers {
			v.limit(field, fmt.Sprintf("at most %d user ids are allowed in a static segment, got more (%d listed)", MaxStaticUsers, len(ids)))
			return
		}
	}
}

func (v *validator) err() error {
	if len(v.errs) == 0 {
		return nil
	}
	errs := v.errs
	if v.dropped > 0 {
		errs = append(errs, FieldError{Field: v.droppedAt, Message: fmt.Sprintf("and %d more errors not listed", v.dropped)})
	}
	code := CodeLimitExceeded
	if v.invalid {
		code = CodeValidationFailed
	}
	return &ValidationError{Code: code, Errors: errs}
}

// checkURL returns why s is not an absolute url a campaign can link to, or
// "": an http or https url with a host, or a deep link of any other scheme
// but the few that run or read something where a dashboard renders them.
func checkURL(s string) string {
	if len(s) > MaxURLLength {
		return fmt.Sprintf("url must be at most %d bytes", MaxURLLength)
	}
	u, err := url.Parse(s)
	if err != nil {
		return "url is not a valid URL"
	}
	switch strings.ToLower(u.Scheme) {
	case "":
		return "url must be absolute (an https link or an app's deep link such as myapp://quiz/1)"
	case "javascript", "data", "vbscript", "file":
		// Dashboards render the link: these would run or read something.
		return fmt.Sprintf("url must not use the %s scheme", u.Scheme)
	case "http", "https":
		if u.Host == "" {
			return "url must name a host"
		}
	}
	return ""
}
