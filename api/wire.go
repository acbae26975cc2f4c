package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/segmentd/segmentd/segment"
)

// This file holds the wire types of the HTTP bodies, kept apart from the
// domain types, and their strict decoding: unknown fields, fields that the
// server owns and values of the wrong JSON type are 400s naming the field.

// serverOwned are the segment fields that only the server sets.
var serverOwned = map[string]bool{
	"id": true, "size": true, "estimatedSize": true, "status": true,
	"createdAt": true, "updatedAt": true, "generation": true, "orgId": true,
}

// timeFormat is how instants are written: RFC 3339 in UTC with milliseconds.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

// readObject reads the request body, bounded by the server's limit, as one
// JSON object and returns its members, raw.
func (s *Server) readObject(w http.ResponseWriter, r *http.Request) (map[string]json.RawMessage, error) {
	// A body declared longer than the cap is refused before it is read.
	if r.ContentLength > s.maxBody {
		return nil, &http.MaxBytesError{Limit: s.maxBody}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, err
		}
		if errors.Is(err, errBodyBudget) {
			return nil, &apiError{status: http.StatusServiceUnavailable, code: codeUnavailable, message: s.budgetSpent()}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The server's read timeout ran out before the whole body came:
			// the JSON is not at fault, the time it took is.
			return nil, &apiError{status: http.StatusRequestTimeout, code: codeRequestTimeout,
				message: "the request body did not arrive within the server's read timeout; send it over a faster link, or in smaller requests (a static list can be created empty and filled with POST /v1/segments/{id}/members)"}
		}
		return nil, &apiError{status: http.StatusBadRequest, code: codeInvalidJSON, message: "could not read the request body"}
	}
	// No request takes more than a few members: an object of millions of
	// them (within the body cap) is refused before its map is built, which
	// costs about twenty times the body.
	if t := bytes.TrimSpace(body); len(t) > 0 && t[0] == '{' && json.Valid(t) {
		if n := arrayLen(t); n > maxBodyMembers {
			return nil, &apiError{status: http.StatusBadRequest, code: codeLimitExceeded,
				message: fmt.Sprintf("the request body is an object of %d members; a request takes at most %d (see the API reference for its fields)", n, maxBodyMembers)}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var obj map[string]json.RawMessage
	if err := dec.Decode(&obj); err != nil {
		return nil, &apiError{status: http.StatusBadRequest, code: codeInvalidJSON, message: "the request body is not a JSON object: " + jsonProblem(err)}
	}
	if obj == nil {
		return nil, &apiError{status: http.StatusBadRequest, code: codeInvalidJSON, message: "the request body must be a JSON object, not null"}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &apiError{status: http.StatusBadRequest, code: codeInvalidJSON, message: "the request body has data after the JSON object"}
	}
	// encoding/json turns invalid UTF-8 and unpaired surrogates into
	// U+FFFD: refused, not repaired into another string (another user's id).
	var fe fieldErrors
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		raw := obj[k]
		if !lossyJSON(raw) {
			continue
		}
		var elems []json.RawMessage
		if json.Unmarshal(raw, &elems) == nil {
			if i := slices.IndexFunc(elems, lossyJSON); i >= 0 {
				f := fmt.Sprintf("%s[%d]", k, i)
				fe.add(f, f+" "+notUTF8)
				continue
			}
		}
		fe.add(k, k+" "+notUTF8)
	}
	if err := fe.err(); err != nil {
		return nil, err
	}
	return obj, nil
}

// maxBodyMembers bounds the members of a request body's object: the
// largest request has a handful.
const maxBodyMembers = 64

const notUTF8 = "must be valid UTF-8 (no invalid bytes or unpaired \\u surrogates)"

// lossyJSON reports whether the JSON text raw holds invalid UTF-8 or the
// \u escape of an unpaired UTF-16 surrogate. raw is valid JSON, so a
// backslash is always an escape inside a string.
func lossyJSON(raw json.RawMessage) bool {
	if !utf8.Valid(raw) {
		return true
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		if raw[i+1] != 'u' {
			i++ // the escaped character
			continue
		}
		r := hex4(raw[i+2 : i+6])
		switch {
		case utf16.IsSurrogate(r) && r < 0xdc00 && i+12 <= len(raw) && raw[i+6] == '\\' && raw[i+7] == 'u' &&
			utf16.DecodeRune(r, hex4(raw[i+8:i+12])) != unicode.ReplacementChar:
			i += 11 // a pair
		case utf16.IsSurrogate(r):
			return true
		default:
			i += 5
		}
	}
	return false
}

// hex4 reads the 4 hex digits of a \u escape.
func hex4(b []byte) rune {
	n, _ := strconv.ParseUint(string(b), 16, 32)
	return rune(n)
}

// jsonProblem describes a decoding error without Go type names.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("%s (at byte %d)", se.Error(), se.Offset)
	case errors.As(err, &te):
		return "got " + te.Value
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of the body"
	}
	return err.Error()
}

// fieldErrors collects the problems of one request body.
type fieldErrors []errorDetail

// maxDetails bounds the details of one error answer, as the validation of
// segment definitions bounds its own: a body of millions of bad elements
// (a list of 16 million numbers fits in the body cap) is answered with the
// first of them, not with an answer many times the body's size.
const maxDetails = 100

// moreDetails is the message of the detail that ends a list cut at
// maxDetails.
const moreDetails = "and more errors not listed"

func (fe *fieldErrors) add(field, msg string) {
	switch {
	case len(*fe) < maxDetails:
		*fe = append(*fe, errorDetail{Field: field, Message: msg})
	case len(*fe) == maxDetails:
		*fe = append(*fe, errorDetail{Field: field, Message: moreDetails})
	}
}

// full reports whether fe takes no more details: the caller can stop
// looking for them.
func (fe fieldErrors) full() bool { return len(fe) > maxDetails }

func (fe fieldErrors) err() error {
	if len(fe) == 0 {
		return nil
	}
	return invalid("the request is invalid", fe...)
}

// checkKeys reports unknown and server-owned members of obj, located under
// prefix, in a stable order.
func checkKeys(fe *fieldErrors, prefix string, obj map[string]json.RawMessage, known map[string]bool, owned map[string]bool) {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if fe.full() {
			return
		}
		switch {
		case owned[k]:
			fe.add(prefix+k, k+" is set by the server and cannot be given")
		case !known[k]:
			fe.add(prefix+k, "unknown field "+k)
		}
	}
}

// decodeString decodes a JSON string; nullable also accepts null as "".
func decodeString(fe *fieldErrors, field string, raw json.RawMessage, nullable bool) (string, bool) {
	if nullable && string(raw) == "null" {
		return "", true
	}
	var s string
	if string(raw) == "null" || json.Unmarshal(raw, &s) != nil {
		fe.add(field, field+" must be a string")
		return "", false
	}
	return s, true
}

// decodeStrings decodes a JSON array of strings; an element that is not a
// string is reported by its index. It reads the array one element at a
// time: a list of millions of short elements (numbers, repeated ids) within
// the body cap costs its strings, not a slice of every element's JSON
// beside them, and a list of non-strings stops at the first errors
// reported.
func decodeStrings(fe *fieldErrors, field string, raw json.RawMessage) ([]string, bool) {
	notArray := func() ([]string, bool) {
		fe.add(field, field+" must be an array of strings")
		return nil, false
	}
	if len(raw) == 0 || raw[0] != '[' {
		return notArray()
	}
	if n, ok := stringElements(raw); ok {
		// The common case, at the speed of one Unmarshal into a slice
		// of the right size.
		ss := make([]string, 0, n)
		if json.Unmarshal(raw, &ss) == nil {
			return ss, true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // a number is an error: no need to convert it
	if _, err := dec.Token(); err != nil {
		return notArray()
	}
	ss := []string{}
	ok := true
	for i := 0; dec.More(); i++ {
		tok, err := dec.Token()
		if err != nil {
			return notArray() // raw is valid JSON: not expected
		}
		if id, isString := tok.(string); isString {
			if ok {
				ss = append(ss, id)
			}
			continue
		}
		ok = false
		fe.add(fmt.Sprintf("%s[%d]", field, i), "user id must be a string")
		if fe.full() {
			return nil, false
		}
		if d, isDelim := tok.(json.Delim); isDelim && (d == '[' || d == '{') {
			// Skip the array or object element whole.
			for depth := 1; depth > 0; {
				tok, err := dec.Token()
				if err != nil {
					return notArray()
				}
				switch tok {
				case json.Delim('['), json.Delim('{'):
					depth++
				case json.Delim(']'), json.Delim('}'):
					depth--
				}
			}
		}
	}
	if !ok {
		return nil, false
	}
	return ss, true
}

// stringElements reports whether the valid JSON array raw holds only
// strings, and how many.
func stringElements(raw json.RawMessage) (int, bool) {
	n := 0
	for i := 1; i < len(raw); i++ {
		switch raw[i] {
		case ' ', '\t', '\n', '\r', ',':
		case ']':
			return n, true
		case '"':
			n++
			i = stringEnd(raw, i)
		default:
			return 0, false
		}
	}
	return 0, false
}

// segmentBody is the body of POST and PUT /v1/segments: a field is nil when
// absent.
type segmentBody struct {
	// Name is the segment's name.
	Name *string
	// Description is the segment's description; null counts as empty.
	Description *string
	// URL is the segment's url; null counts as empty.
	URL *string
	// Type is "static" or "dynamic".
	Type *string
	// Criteria are the criteria of a dynamic segment.
	Criteria *segment.Criteria
	UserIDs  []string // nil when absent
	// CriteriaOver are the limit errors of criteria lists longer than a
	// segment may have, which are not decoded (Criteria leaves them
	// empty).
	CriteriaOver []segment.FieldError
}

// check returns the first of fe's problems, then of b's criteria lists
// that are too long (see overLimits), or nil.
func (b segmentBody) check(fe fieldErrors) error {
	if err := fe.err(); err != nil {
		return err
	}
	return overLimits(b.CriteriaOver)
}

// overLimits returns the limit error of criteria lists longer than a
// segment may have (see decodeCriteria), or nil when there are none.
func overLimits(over []segment.FieldError) error {
	if len(over) == 0 {
		return nil
	}
	return &segment.ValidationError{Code: segment.CodeLimitExceeded, Errors: over}
}

// applyTo puts the body's editable fields that are present on d, and
// normalises d.
func (b segmentBody) applyTo(d *segment.Definition) {
	if b.Name != nil {
		d.Name = *b.Name
	}
	if b.Description != nil {
		d.Description = *b.Description
	}
	if b.URL != nil {
		d.URL = *b.URL
	}
	if b.Criteria != nil {
		d.Criteria = *b.Criteria
	}
	d.Normalize()
}

var segmentBodyFields = map[string]bool{
	"name": true, "description": true, "url": true, "type": true, "criteria": true, "userIds": true,
}

// decodeSegmentBody reads and checks a segment body.
func (s *Server) decodeSegmentBody(w http.ResponseWriter, r *http.Request) (segmentBody, error) {
	obj, err := s.readObject(w, r)
	if err != nil {
		return segmentBody{}, err
	}
	var fe fieldErrors
	checkKeys(&fe, "", obj, segmentBodyFields, serverOwned)
	var b segmentBody
	str := func(field string, nullable bool) *string {
		raw, ok := obj[field]
		if !ok {
			return nil
		}
		v, ok := decodeString(&fe, field, raw, nullable)
		if !ok {
			return nil
		}
		return &v
	}
	b.Name = str("name", false)
	b.Description = str("description", true)
	b.URL = str("url", true)
	b.Type = str("type", false)
	if raw, ok := obj["criteria"]; ok {
		if c, ok := decodeCriteria(&fe, &b.CriteriaOver, "criteria", raw); ok {
			b.Criteria = &c
		}
	}
	if raw, ok := obj["userIds"]; ok {
		b.UserIDs, _ = decodeStrings(&fe, "userIds", raw)
	}
	return b, fe.err()
}

// decodeCriteria decodes {"include": [...], "exclude": [...]}; a missing list
// is empty. A list of more criteria than a segment may have is not decoded:
// its limit error, with the count, goes to over, and the list is left empty,
// so that a body of millions of criteria costs a count of them, not their
// decoding.
func decodeCriteria(fe *fieldErrors, over *[]segment.FieldError, field string, raw json.RawMessage) (segment.Criteria, bool) {
	var obj map[string]json.RawMessage
	if string(raw) == "null" || json.Unmarshal(raw, &obj) != nil {
		fe.add(field, field+` must be an object {"include": [...], "exclude": [...]}`)
		return segment.Criteria{}, false
	}
	n := len(*fe)
	checkKeys(fe, field+".", obj, map[string]bool{"include": true, "exclude": true}, nil)
	c := segment.Criteria{Include: []segment.Criterion{}, Exclude: []segment.Criterion{}}
	for _, part := range []struct {
		name string
		max  int
		out  *[]segment.Criterion
	}{{"include", segment.MaxInclude, &c.Include}, {"exclude", segment.MaxExclude, &c.Exclude}} {
		raw, ok := obj[part.name]
		if !ok {
			continue
		}
		at := field + "." + part.name
		if len(raw) == 0 || raw[0] != '[' {
			fe.add(at, at+" must be an array of criteria")
			continue
		}
		if count := arrayLen(raw); count > part.max {
			*over = append(*over, segment.FieldError{Field: at,
				Message: fmt.Sprintf("at most %d %s criteria are allowed, got %d", part.max, part.name, count)})
			continue
		}
		var items []json.RawMessage
		if json.Unmarshal(raw, &items) != nil {
			fe.add(at, at+" must be an array of criteria")
			continue
		}
		for i, item := range items {
			if fe.full() {
				break
			}
			cr, _ := decodeCriterion(fe, fmt.Sprintf("%s[%d]", at, i), item)
			*part.out = append(*part.out, cr)
		}
	}
	return c, len(*fe) == n
}

// arrayLen returns how many elements the valid JSON array raw holds (or
// members the object raw holds), without decoding them.
func arrayLen(raw json.RawMessage) int {
	n, depth, counted := 0, 0, false
	for i := 0; i < len(raw); i++ {
		switch raw[i] {
		case ' ', '\t', '\n', '\r', ':':
		case ',':
			if depth == 1 {
				counted = false
			}
		case '[', '{':
			if depth == 1 && !counted {
				n, counted = n+1, true
			}
			depth++
		case ']', '}':
			depth--
		case '"':
			if depth == 1 && !counted {
				n, counted = n+1, true
			}
			i = stringEnd(raw, i)
		default: // a number, true, false or null
			if depth == 1 && !counted {
				n, counted = n+1, true
			}
		}
	}
	return n
}

// stringEnd returns the index of the quote that ends the JSON string whose
// opening quote is at raw[i] (len(raw) when it does not end).
func stringEnd(raw []byte, i int) int {
	for i++; i < len(raw) && raw[i] != '"'; i++ {
		if raw[i] == '\\' {
			i++ // the escaped character
		}
	}
	return i
}

// decodeCriterion decodes {"field", "operator", "value"}; HasValue is set
// when "value" is present, even as null. Numbers decode as float64.
func decodeCriterion(fe *fieldErrors, at string, raw json.RawMessage) (segment.Criterion, bool) {
	var obj map[string]json.RawMessage
	if string(raw) == "null" || json.Unmarshal(raw, &obj) != nil {
		fe.add(at, at+` must be an object {"field", "operator", "value"}`)
		return segment.Criterion{}, false
	}
	n := len(*fe)
	checkKeys(fe, at+".", obj, map[string]bool{"field": true, "operator": true, "value": true}, nil)
	var c segment.Criterion
	if raw, ok := obj["field"]; ok {
		c.Field, _ = decodeString(fe, at+".field", raw, false)
	}
	if raw, ok := obj["operator"]; ok {
		c.Operator, _ = decodeString(fe, at+".operator", raw, false)
	}
	if raw, ok := obj["value"]; ok {
		c.HasValue = true
		// The body parsed: what fails here is a number past float64's range.
		if err := json.Unmarshal(raw, &c.Value); err != nil {
			fe.add(at+".value", "value holds a number out of range (beyond about ±1.8e308)")
		}
	}
	return c, len(*fe) == n
}

// segmentJSON is a segment as the API shows it.
type segmentJSON struct {
	// ID is the segment's id.
	ID string `json:"id"`
	// Name is the segment's display name.
	Name string `json:"name"`
	// Description is the segment's description, nil (null) when it has none.
	Description *string `json:"description"`
	// Type is "static" or "dynamic".
	Type string `json:"type"`
	// Criteria are the criteria of a dynamic segment, nil (left out) for a
	// static one.
	Criteria *criteriaJSON `json:"criteria,omitempty"`
	// UserIDs is the list of a static segment where the answer shows it (a
	// create, a get of one segment), nil (left out) otherwise.
	UserIDs *[]string `json:"userIds,omitempty"`
	// URL is the segment's url, nil (null) when it has none.
	URL *string `json:"url"`
	// EstimatedSize is the size last copied from the exact size by the
	// periodic refresh, 0 until the first.
	EstimatedSize int64 `json:"estimatedSize"`
	// Size is the segment's exact size (SCARD of its member set).
	Size int64 `json:"size"`
	// Status is "building" or "ready".
	Status string `json:"status"`
	// Progress is how far the backfill has come, for a dynamic segment being
	// built; nil (left out) otherwise.
	Progress *progressJSON `json:"progress,omitempty"`
	// CreatedAt is when the segment was created, in UTC with milliseconds
	// (timeFormat).
	CreatedAt string `json:"createdAt"`
	// UpdatedAt is when the segment last changed, in UTC with milliseconds
	// (timeFormat).
	UpdatedAt string `json:"updatedAt"`
}

type criteriaJSON struct {
	// Include are the criteria a member must all match.
	Include []criterionJSON `json:"include"`
	// Exclude are the criteria a member must match none of.
	Exclude []criterionJSON `json:"exclude"`
}

// criterionJSON is a criterion as shown; "value" is left out when the
// criterion has none.
type criterionJSON struct {
	// Field is the profile field the criterion reads.
	Field string
	// Operator is the criterion's comparison, such as "in" or ">=".
	Operator string
	// Value is the value the field is compared with, when HasValue.
	Value any
	// HasValue reports whether the criterion has a value, null included.
	HasValue bool
}

// MarshalJSON writes {"field", "operator", "value"}, with "value" exactly when
// the criterion has one, null included.
func (c criterionJSON) MarshalJSON() ([]byte, error) {
	if !c.HasValue {
		return marshal(struct {
			Field    string `json:"field"`
			Operator string `json:"operator"`
		}{c.Field, c.Operator})
	}
	return marshal(struct {
		Field    string `json:"field"`
		Operator string `json:"operator"`
		Value    any    `json:"value"`
	}{c.Field, c.Operator, c.Value})
}

// checkCriteriaSize reports criteria larger than segment.MaxCriteriaBytes
// written as JSON (as the API reads and writes them) as a
// *segment.ValidationError with the code segment.CodeLimitExceeded, naming
// the larger of criteria.include and criteria.exclude. It applies to
// criteria a request gives, not to stored ones, so that definitions stored
// before the limit still load and can be renamed.
func checkCriteriaSize(c segment.Criteria) error {
	out := criteriaOut(c)
	inc, err := json.Marshal(out.Include)
	if err != nil {
		return fmt.Errorf("criteria: %w", err)
	}
	exc, err := json.Marshal(out.Exclude)
	if err != nil {
		return fmt.Errorf("criteria: %w", err)
	}
	n := len(inc) + len(exc)
	if n <= segment.MaxCriteriaBytes {
		return nil
	}
	field := "criteria.include"
	if len(exc) > len(inc) {
		field = "criteria.exclude"
	}
	return &segment.ValidationError{Code: segment.CodeLimitExceeded, Errors: []segment.FieldError{{Field: field,
		Message: fmt.Sprintf("include and exclude criteria together must be at most %d bytes as JSON, got %d", segment.MaxCriteriaBytes, n)}}}
}

func criterionOut(c segment.Criterion) criterionJSON {
	return criterionJSON{Field: c.Field, Operator: c.Operator, Value: c.Value, HasValue: c.HasValue || c.Value != nil}
}

func criteriaOut(c segment.Criteria) *criteriaJSON {
	out := &criteriaJSON{Include: make([]criterionJSON, 0, len(c.Include)), Exclude: make([]criterionJSON, 0, len(c.Exclude))}
	for _, cr := range c.Include {
		out.Include = append(out.Include, criterionOut(cr))
	}
	for _, cr := range c.Exclude {
		out.Exclude = append(out.Exclude, criterionOut(cr))
	}
	return out
}

func formatTime(t time.Time) string { return t.UTC().Format(timeFormat) }

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// progressJSON is how far the backfill of a building segment has come.
type progressJSON struct {
	// UsersScanned is how many users the backfill has evaluated so far.
	UsersScanned int64 `json:"usersScanned"`
}

// segmentOut shows d with its exact size. userIDs is the list of a static
// segment, nil to leave it out.
func segmentOut(d segment.Definition, size int64, userIDs []string) segmentJSON {
	out := segmentJSON{
		ID: d.ID, Name: d.Name, Description: optString(d.Description), Type: string(d.Type),
		URL: optString(d.URL), EstimatedSize: d.EstimatedSize, Size: size, Status: string(d.Status),
		CreatedAt: formatTime(d.CreatedAt), UpdatedAt: formatTime(d.UpdatedAt),
	}
	switch d.Type {
	case segment.TypeDynamic:
		out.Criteria = criteriaOut(d.Criteria)
		if d.Status == segment.StatusBuilding {
			out.Progress = &progressJSON{UsersScanned: d.BackfillScanned}
		}
	case segment.TypeStatic:
		if userIDs != nil {
			ids := slices.Clone(userIDs)
			out.UserIDs = &ids
		}
	}
	return out
}

// listJSON is a page of a list: {"data": [...], "nextCursor": "…" or null}.
type listJSON[T any] struct {
	// Data holds the page's items; empty, never null, when there are none.
	Data []T `json:"data"`
	// NextCursor is the cursor of the next page, nil (null) after the last
	// page.
	NextCursor *string `json:"nextCursor"`
}

func page[T any](data []T, next string) listJSON[T] {
	if data == nil {
		data = []T{}
	}
	return listJSON[T]{Data: data, NextCursor: optString(next)}
}

// readQuery returns the request's query parameters, noting in fe each
// one that cannot be read (a bad %-escape, a ';' separator): url.URL.Query
// drops those silently, and a cursor or limit the client sent must not
// become absent (a walk that starts over).
func readQuery(fe *fieldErrors, r *http.Request) url.Values {
	q := url.Values{}
	for pair := range strings.SplitSeq(r.URL.RawQuery, "&") {
		if pair == "" {
			continue
		}
		v, err := url.ParseQuery(pair)
		if err != nil {
			name, _, _ := strings.Cut(pair, "=")
			name, _, _ = strings.Cut(name, ";")
			if n, uerr := url.QueryUnescape(name); uerr == nil {
				name = n
			}
			fe.add(name, fmt.Sprintf("query parameter %q cannot be read (a bad %%-escape or a ';')", name))
			continue
		}
		for k, vs := range v {
			q[k] = append(q[k], vs...)
		}
	}
	return q
}
