package segment

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// MaxInclude and MaxExclude bound the number of include and exclude criteria
// of one segment; Compile rejects criteria over either limit with the code
// [CodeLimitExceeded].
const MaxInclude, MaxExclude = 20, 20

// Validation error codes carried by [ValidationError.Code].
const (
	// CodeValidationFailed reports criteria or changes that can never be valid.
	CodeValidationFailed = "validation_failed"
	// CodeLimitExceeded reports more criteria than MaxInclude or MaxExclude.
	CodeLimitExceeded = "limit_exceeded"
)

// Operator names accepted in [Criterion.Operator]. Each negative operator is
// the exact negation of its positive counterpart, so it matches a missing
// field.
const (
	// OpEquals matches a field holding the same JSON value as the criterion:
	// numbers by value, arrays and objects deeply.
	OpEquals = "equals"
	// OpNotEquals is the negation of OpEquals.
	OpNotEquals = "not_equals"
	// OpIn takes an array value; it matches a scalar field equal to one of its
	// elements and an array field sharing an element with it.
	OpIn = "in"
	// OpNotIn is the negation of OpIn.
	OpNotIn = "not_in"
	// OpContains matches a string field containing the value as a substring
	// and an array field holding the value as an element.
	OpContains = "contains"
	// OpNotContains is the negation of OpContains.
	OpNotContains = "not_contains"
	// OpGreater compares numbers with a number, and RFC 3339 dates with an
	// RFC 3339 date or a relative date such as "now-30d".
	OpGreater = ">"
	// OpGreaterEq is greater than or equal, typed as OpGreater.
	OpGreaterEq = ">="
	// OpLess is less than, typed as OpGreater.
	OpLess = "<"
	// OpLessEq is less than or equal, typed as OpGreater.
	OpLessEq = "<="
	// OpExists matches a field that is present and not null; it takes no
	// value.
	OpExists = "exists"
	// OpNotExists is the negation of OpExists.
	OpNotExists = "not_exists"
)

// Criterion is one condition of a segment: the profile field at Field (a
// dotted path into the profile's JSON objects) compared through Operator with
// Value.
//
// Value holds a decoded JSON value (nil, bool, float64, string, []any or
// map[string]any; Compile also accepts Go integers, float32, json.Number and
// []string). HasValue reports whether a value was given at all, which tells an
// absent value from an explicit JSON null; a non-nil Value counts as given
// even when HasValue is false.
type Criterion struct {
	// Field is the dotted path of the profile field the criterion reads, such
	// as "tier" or "customFields.testAccount".
	Field string
	// Operator is one of the Op constants.
	Operator string
	// Value is the value the field is compared with, a decoded JSON value;
	// nil for none, or for JSON null when HasValue is set.
	Value any
	// HasValue reports whether a value was given, null included.
	HasValue bool
}

// Criteria are the include and exclude criteria of a dynamic segment.
type Criteria struct {
	// Include are the criteria a member must all match.
	Include []Criterion
	// Exclude are the criteria a member must match none of.
	Exclude []Criterion
}

// hasValue reports whether the criterion carries a value, JSON null included.
func (c Criterion) hasValue() bool { return c.HasValue || c.Value != nil }

// FieldError is one validation problem, located by Field (for example
// "criteria.include[0].operator").
type FieldError struct {
	// Field locates the problem, as a path into the request
	// ("criteria.include[0].operator").
	Field string
	// Message says what is wrong there.
	Message string
}

// ValidationError reports why criteria, or a profile patch, were rejected.
// Code is [CodeValidationFailed] or [CodeLimitExceeded]; Errors lists every
// problem found.
type ValidationError struct {
	// Code is CodeValidationFailed or CodeLimitExceeded.
	Code string
	// Errors lists the problems found, each located by its Field.
	Errors []FieldError
}

// Error returns the code followed by each field error.
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString(e.Code)
	for i, fe := range e.Errors {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(fe.Field)
		b.WriteString(": ")
		b.WriteString(fe.Message)
	}
	return b.String()
}

// Rule is a compiled, validated set of criteria. It is immutable and safe for
// concurrent use.
type Rule struct {
	criteria Criteria
	conds    []cond // include then exclude criteria, as Match scans them
	include  []cond // conds[:len(Include)]
	exclude  []cond // conds[len(Include):]
	fields   []string
	relative bool
}

// MaxCriteriaBytes bounds a segment's criteria, include and exclude
// together, written as JSON: every instance holds every dynamic definition,
// compiled, and a page of the segments list gives 100 of them. It is far
// above what 40 criteria of any real rule take (an "in" list of about
// 10,000 short values fits).
const MaxCriteriaBytes = 256 << 10

// Compile validates c and compiles it into a Rule. The error, when not nil, is
// a *ValidationError listing every problem found; over MaxInclude or
// MaxExclude criteria it carries only the limit errors.
func Compile(c Criteria) (*Rule, error) {
	var limits []FieldError
	if len(c.Include) > MaxInclude {
		limits = append(limits, FieldError{"criteria.include", fmt.Sprintf("at most %d include criteria are allowed, got %d", MaxInclude, len(c.Include))})
	}
	if len(c.Exclude) > MaxExclude {
		limits = append(limits, FieldError{"criteria.exclude", fmt.Sprintf("at most %d exclude criteria are allowed, got %d", MaxExclude, len(c.Exclude))})
	}
	if limits != nil {
		return nil, &ValidationError{Code: CodeLimitExceeded, Errors: limits}
	}

	r := &Rule{
		criteria: Criteria{Include: slices.Clone(c.Include), Exclude: slices.Clone(c.Exclude)},
		conds:    make([]cond, len(c.Include)+len(c.Exclude)),
	}
	r.include, r.exclude = r.conds[:len(c.Include):len(c.Include)], r.conds[len(c.Include):]
	var errs []FieldError
	for i, cr := range c.Include {
		errs = compileCond(&r.include[i], cr, fmt.Sprintf("criteria.include[%d]", i), errs)
		r.include[i].failIf = r.include[i].neg
	}
	for i, cr := range c.Exclude {
		errs = compileCond(&r.exclude[i], cr, fmt.Sprintf("criteria.exclude[%d]", i), errs)
		r.exclude[i].failIf = !r.exclude[i].neg
	}
	if errs != nil {
		return nil, &ValidationError{Code: CodeValidationFailed, Errors: errs}
	}

	seen := make(map[string]bool)
	for _, cs := range [][]cond{r.include, r.exclude} {
		for i := range cs {
			if !seen[cs[i].field] {
				seen[cs[i].field] = true
				r.fields = append(r.fields, cs[i].field)
			}
			r.relative = r.relative || cs[i].kind == kindRelative
		}
	}
	slices.Sort(r.fields)
	// Explain reports criteria in their order; Match and the rest test them
	// in the order most likely to decide early.
	r.include, r.exclude = slices.Clone(r.include), slices.Clone(r.exclude)
	slices.SortStableFunc(r.conds, func(a, b cond) int { return a.rank() - b.rank() })
	return r, nil
}

// rank orders a rule's conditions for Match, which stops at the first that
// puts a user out: equality and membership tests first (cheap, and most
// users fail them: "cohort equals 7"), then numeric comparisons, other
// tests, and dates, which are parsed. A condition that puts a user out when
// its test holds (an exclude, or a negated include) seldom decides, so it
// goes after every other.
func (c *cond) rank() int {
	r := 2
	switch {
	case c.op == opEquals || c.op == opIn:
		r = 0
	case c.kind == kindDate || c.kind == kindRelative:
		r = 3
	case c.op >= opGT && c.op <= opLTE:
		r = 1
	}
	if c.failIf {
		r += 4
	}
	return r
}

// MustCompile is like Compile but panics on invalid criteria; it is meant for
// criteria fixed in code.
func MustCompile(c Criteria) *Rule {
	r, err := Compile(c)
	if err != nil {
		panic(err)
	}
	return r
}

// Criteria returns the criteria the rule was compiled from.
func (r *Rule) Criteria() Criteria {
	return Criteria{Include: slices.Clone(r.criteria.Include), Exclude: slices.Clone(r.criteria.Exclude)}
}

// Fields returns the distinct field paths the rule reads, sorted, such as
// "points" or "customFields.vip.level".
func (r *Rule) Fields() []string { return slices.Clone(r.fields) }

// ProfileKeys returns the top-level profile fields the rule reads, sorted:
// "customFields" for "customFields.vip.level". See DecodeProfileKeys.
func (r *Rule) ProfileKeys() []string {
	keys := make([]string, 0, len(r.fields))
	for _, f := range r.fields {
		k, _, _ := strings.Cut(f, ".")
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// TimeDependent reports whether the rule has a criterion relative to the
// current time (such as "updatedAt < now-30d"), whose outcome can change
// without any change to the profile.
func (r *Rule) TimeDependent() bool { return r.relative }

// opKind is the positive form of an operator; cond.neg negates it.
type opKind uint8

const (
	opEquals opKind = iota
	opIn
	opContains
	opGT
	opGTE
	opLT
	opLTE
	opExists
)

// valueKind classifies a criterion's value once, at Compile.
type valueKind uint8

const (
	kindNone valueKind = iota
	kindString
	kindNumber
	kindBool
	kindArray
	kindObject
	kindDate     // absolute RFC 3339 instant, for the ordering operators
	kindRelative // now±duration, for the ordering operators
)

// cond is a compiled criterion. The fields Match reads come first, to share
// cache lines.
type cond struct {
	key   string    // first path segment
	top   int8      // key's slot in a Profile, -1 for a field outside them
	slot  int32     // the path's number in a FieldSlots, -1 when unbound
	rest  []string  // remaining path segments, nil for a top-level field
	check checkFunc // Match's test, picked by pickCheck
	fn    testFn
	neg   bool
	// failIf is the outcome of the positive test that puts a user outside
	// the segment: false for an include criterion, true for an exclude one,
	// each flipped by neg.
	failIf bool
	// cmpOK has bit cmp+1 set for each comparison result (-1, 0, 1) under
	// which an ordering operator holds.
	cmpOK uint8
	kind  valueKind
	str   string
	num   float64
	off   offset // kindRelative: dur, split
	// inStrs repeats set.strs when a linear scan is what set.has would do,
	// saving Match a pointer hop; nil otherwise.
	inStrs []string
	set    *valSet // elements of an in/not_in value

	op    opKind
	b     bool
	field string
	path  []string
	val   any           // normalised value, for deep equality
	when  instant       // kindDate
	dur   time.Duration // kindRelative
}

// testFn selects the test a cond runs, so that Match takes one switch per
// criterion.
type testFn uint8

const (
	fnExists testFn = iota
	fnEqString
	fnEqual
	fnIn
	fnContains
	fnOrderNumber
	fnOrderDate
	fnOrderRelative
)

// valSet holds the elements of an in/not_in array split by type, so that a
// scalar field is checked without interface comparisons.
type valSet struct {
	strs     []string
	strIndex map[string]struct{} // for large string lists only
	nums     []float64
	numIndex map[float64]struct{} // for large number lists only
	hasTrue  bool
	hasFalse bool
	hasNull  bool
	other    []any // arrays and objects
	// otherIndex holds the canonical keys of other, for large lists only.
	otherIndex map[string]struct{}
}

// strIndexMin is the list length from which a map beats a linear scan.
const strIndexMin = 16

var operators = map[string]struct {
	op  opKind
	neg bool
}{
	OpEquals: {opEquals, false}, OpNotEquals: {opEquals, true},
	OpIn: {opIn, false}, OpNotIn: {opIn, true},
	OpContains: {opContains, false}, OpNotContains: {opContains, true},
	OpGreater: {opGT, false}, OpGreaterEq: {opGTE, false},
	OpLess: {opLT, false}, OpLessEq: {opLTE, false},
	OpExists: {opExists, false}, OpNotExists: {opExists, true},
}

// compileCond fills c from cr and appends any problems, located under at.
func compileCond(c *cond, cr Criterion, at string, errs []FieldError) []FieldError {
	if msg := checkPath(cr.Field); msg != "" {
		errs = append(errs, FieldError{at + ".field", msg})
	}
	c.field = cr.Field
	c.slot = -1
	c.path = strings.Split(cr.Field, ".")
	c.key = c.path[0]
	c.top = int8(knownSlot(c.key))
	if len(c.path) > 1 {
		c.rest = c.path[1:]
	}

	o, ok := operators[cr.Operator]
	if !ok {
		msg := "unknown operator " + strconv.Quote(cr.Operator)
		if cr.Operator == "" {
			msg = "operator is required"
		}
		return append(errs, FieldError{at + ".operator", msg})
	}
	c.op, c.neg = o.op, o.neg
	if msg := c.compileValue(cr); msg != "" {
		errs = append(errs, FieldError{at + ".value", msg})
	}
	c.check = c.pickCheck()
	return errs
}

// pickCheck chooses the checkFunc for a compiled cond.
func (c *cond) pickCheck() checkFunc {
	switch {
	case c.fn == fnEqString:
		return checkEqString
	case c.fn == fnIn && c.inStrs != nil:
		return checkInStrings
	case c.fn == fnContains && c.kind == kindString:
		return checkContainsString
	case c.fn == fnOrderNumber:
		return checkOrderNumber
	case c.fn == fnOrderRelative:
		return checkOrderRelative
	}
	return checkGeneric
}

// checkPath returns why field is not a valid dotted path, or "".
func checkPath(field string) string {
	if field == "" {
		return "field is required"
	}
	if slices.Contains(strings.Split(field, "."), "") {
		return "malformed field path " + strconv.Quote(field) + ": empty path segment"
	}
	return ""
}

// compileValue classifies cr's value for c.op and returns why it is invalid,
// or "".
func (c *cond) compileValue(cr Criterion) string {
	op := strconv.Quote(cr.Operator)
	if c.op == opExists {
		c.fn = fnExists
		if cr.hasValue() {
			return "operator " + op + " takes no value"
		}
		return ""
	}
	if !cr.hasValue() {
		return "value is required for operator " + op
	}
	if cr.Value == nil {
		return "value must not be null"
	}
	v, err := normalize(cr.Value)
	if err != "" {
		return err
	}
	c.val = v

	switch c.op {
	case opEquals:
		c.setScalar(v)
		c.fn = fnEqual
		if c.kind == kindString {
			c.fn = fnEqString
		}
	case opIn:
		arr, ok := v.([]any)
		if !ok {
			return "operator " + op + " requires an array value"
		}
		c.kind, c.fn = kindArray, fnIn
		c.set = newValSet(arr)
		if c.set.strIndex == nil && len(c.set.strs) > 0 {
			c.inStrs = c.set.strs
		}
	case opContains:
		// An object is an element of an array of objects. An array value
		// is almost always meant as "any of": that is `in`.
		if _, ok := v.([]any); ok {
			return "operator " + op + " takes one element (a string, number, boolean or object); to match any of several, use in"
		}
		c.setScalar(v)
		c.fn = fnContains
	case opGT, opGTE, opLT, opLTE:
		c.cmpOK = map[opKind]uint8{opGT: 0b100, opGTE: 0b110, opLT: 0b001, opLTE: 0b011}[c.op]
		switch x := v.(type) {
		case float64:
			c.kind, c.num, c.fn = kindNumber, x, fnOrderNumber
		case string:
			if d, ok := ParseRelative(x); ok {
				c.kind, c.dur, c.off, c.fn = kindRelative, d, offsetOf(d), fnOrderRelative
			} else if t, ok := parseTime(x); ok {
				c.kind, c.when, c.fn = kindDate, t, fnOrderDate
			} else {
				return "operator " + op + " requires a number, an RFC 3339 date or a relative date such as now-30d, got " + strconv.Quote(x)
			}
		default:
			return "operator " + op + " requires a number, an RFC 3339 date or a relative date such as now-30d"
		}
	}
	return ""
}

func (c *cond) setScalar(v any) {
	switch x := v.(type) {
	case string:
		c.kind, c.str = kindString, x
	case float64:
		c.kind, c.num = kindNumber, x
	case bool:
		c.kind, c.b = kindBool, x
	case []any:
		c.kind = kindArray
	case map[string]any:
		c.kind = kindObject
	}
}

func newValSet(arr []any) *valSet {
	s := &valSet{}
	for _, e := range arr {
		switch x := e.(type) {
		case string:
			s.strs = append(s.strs, x)
		case float64:
			s.nums = append(s.nums, x)
		case bool:
			if x {
				s.hasTrue = true
			} else {
				s.hasFalse = true
			}
		case nil:
			s.hasNull = true
		default:
			s.other = append(s.other, x)
		}
	}
	if len(s.strs) >= strIndexMin {
		s.strIndex = make(map[string]struct{}, len(s.strs))
		for _, x := range s.strs {
			s.strIndex[x] = struct{}{}
		}
	}
	// An array field is checked element by element: without an index, an
	// array of n numbers against a list of m costs n*m comparisons.
	if len(s.nums) >= strIndexMin {
		s.numIndex = make(map[float64]struct{}, len(s.nums))
		for _, x := range s.nums {
			s.numIndex[x] = struct{}{} // -0 and 0 are one key, as they are equal
		}
	}
	if len(s.other) >= strIndexMin {
		s.otherIndex = make(map[string]struct{}, len(s.other))
		for _, x := range s.other {
			if k, ok := appendCanonical(nil, x); ok {
				s.otherIndex[string(k)] = struct{}{}
			}
		}
	}
	return s
}

// normalize converts a criterion value built in Go into the shapes
// encoding/json produces, so evaluation only meets those. It returns a
// message for values no JSON document can hold.
func normalize(v any) (any, string) {
	switch x := v.(type) {
	case nil, bool, string:
		return x, ""
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, "value must be a finite number"
		}
		return x, ""
	case float32:
		return normalize(float64(x))
	case int:
		return float64(x), ""
	case int8:
		return float64(x), ""
	case int16:
		return float64(x), ""
	case int32:
		return float64(x), ""
	case int64:
		return float64(x), ""
	case uint:
		return float64(x), ""
	case uint8:
		return float64(x), ""
	case uint16:
		return float64(x), ""
	case uint32:
		return float64(x), ""
	case uint64:
		return float64(x), ""
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return nil, "value " + strconv.Quote(string(x)) + " is not a valid number"
		}
		return normalize(f)
	case []string:
		out := make([]any, len(x))
		for i, s := range x {
			out[i] = s
		}
		return out, ""
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			n, msg := normalize(e)
			if msg != "" {
				return nil, msg
			}
			out[i] = n
		}
		return out, ""
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			n, msg := normalize(e)
			if msg != "" {
				return nil, msg
			}
			out[k] = n
		}
		return out, ""
	}
	return nil, fmt.Sprintf("unsupported value type %T", v)
}

// ParseRelative parses a date relative to the current time, "now", "now-30d"
// or "now+2h", into the signed offset from now. Units are s, m, h, d (24
// hours) and w (7 days); the amount is a decimal integer. ok is false for any
// other form or an offset beyond the range of time.Duration.
func ParseRelative(s string) (d time.Duration, ok bool) {
	rest, found := strings.CutPrefix(s, "now")
	if !found {
		return 0, false
	}
	if rest == "" {
		return 0, true
	}
	if len(rest) < 3 || (rest[0] != '+' && rest[0] != '-') {
		return 0, false
	}
	var unit time.Duration
	switch rest[len(rest)-1] {
	case 's':
		unit = time.Second
	case 'm':
		unit = time.Minute
	case 'h':
		unit = time.Hour
	case 'd':
		unit = 24 * time.Hour
	case 'w':
		unit = 7 * 24 * time.Hour
	default:
		return 0, false
	}
	digits := rest[1 : len(rest)-1]
	var n int64
	for i := 0; i < len(digits); i++ {
		ch := digits[i]
		if ch < '0' || ch > '9' {
			return 0, false
		}
		n = n*10 + int64(ch-'0')
		if n > int64(math.MaxInt64/unit) {
			return 0, false
		}
	}
	d = time.Duration(n) * unit
	if rest[0] == '-' {
		d = -d
	}
	return d, true
}
