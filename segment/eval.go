package segment

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Match reports whether a user with profile p is a member of the segment at
// time now: every include criterion matches and no exclude criterion does.
// It does not allocate.
func (r *Rule) Match(p *Profile, now time.Time) bool {
	var n instant
	if r.relative {
		n = instantOf(now)
	}
	// Criteria are taken a batch at a time: first every lookup, which are
	// independent of one another and so overlap in the CPU, then every test,
	// failing on the first whose positive outcome is its failIf. Include and
	// exclude criteria are handled alike.
	var vals [matchBatch]any
	for cs := r.conds; len(cs) > 0; {
		batch := cs[:min(len(cs), matchBatch)]
		cs = cs[len(batch):]
		for i := range batch {
			vals[i] = batch[i].value(p)
		}
		for i := range batch {
			c := &batch[i]
			if c.check(c, vals[i], n) == c.failIf {
				return false
			}
		}
	}
	return true
}

// matchBatch is how many lookups Match issues before testing their values:
// enough to cover most rules, few enough that a rule failing early does not
// pay for many lookups it did not need.
const matchBatch = 8

// checkFunc runs a cond's positive test on its field's value v (nil when
// missing). Compile picks one per cond: specialised, straight-line versions
// of cond.test for the common cases cost Match markedly less than the generic
// one, and must agree with it, as the tests and FuzzCompile check.
type checkFunc func(c *cond, v any, now instant) bool

// value returns the value of the cond's field in p, nil when missing.
func (c *cond) value(p *Profile) any {
	v := p.field(c.key, int(c.top))
	if c.rest != nil {
		v = descend(v, c.rest)
	}
	return v
}

func checkGeneric(c *cond, v any, now instant) bool { return c.test(v, now) }

func checkEqString(c *cond, v any, _ instant) bool {
	s, ok := v.(string)
	return ok && eqStr(s, c.str)
}

// checkInStrings serves in/not_in over a short list holding strings, all of
// which are in inStrs; a string field can only equal one of those.
func checkInStrings(c *cond, v any, now instant) bool {
	if s, ok := v.(string); ok {
		for _, x := range c.inStrs {
			if eqStr(x, s) {
				return true
			}
		}
		return false
	}
	return c.test(v, now)
}

func checkContainsString(c *cond, v any, _ instant) bool {
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			if s, ok := e.(string); ok && eqStr(s, c.str) {
				return true
			}
		}
	case string:
		return strings.Contains(x, c.str)
	}
	return false
}

func checkOrderNumber(c *cond, v any, now instant) bool {
	if f, ok := v.(float64); ok {
		return c.holds(compareFloat(f, c.num))
	}
	return c.test(v, now)
}

func checkOrderRelative(c *cond, v any, now instant) bool {
	s, ok := v.(string)
	if !ok {
		return false
	}
	// parseTime, inlined by hand.
	t, ok := parseRFC3339Fast(s)
	if !ok {
		t, ok = parseTimeSlow(s)
	}
	return ok && c.holds(t.compare(now.addOffset(c.off)))
}

// Explanation tells why a profile is or is not a member: the outcome of every
// criterion, in the order of the rule's criteria.
type Explanation struct {
	// Member reports whether the profile is a member of the segment.
	Member bool
	// Include is the outcome of each include criterion, in order.
	Include []CriterionResult
	// Exclude is the outcome of each exclude criterion, in order.
	Exclude []CriterionResult
}

// CriterionResult is the outcome of one criterion for one profile. Present
// reports whether the field was in the profile and not null, and Value holds
// the value found there (nil when missing).
type CriterionResult struct {
	// Criterion is the criterion evaluated.
	Criterion Criterion
	// Matched reports whether the criterion matched the profile.
	Matched bool
	// Present reports whether the field was in the profile and not null.
	Present bool
	// Value is the value found at the field, nil when missing.
	Value any
}

// Explain evaluates every criterion of the rule against p at time now, without
// stopping at the first failure, and reports each outcome. Its Member always
// equals Match(p, now).
func (r *Rule) Explain(p *Profile, now time.Time) Explanation {
	n := instantOf(now)
	e := Explanation{
		Member:  true,
		Include: make([]CriterionResult, len(r.include)),
		Exclude: make([]CriterionResult, len(r.exclude)),
	}
	for i := range r.include {
		e.Include[i] = r.include[i].explain(r.criteria.Include[i], p, n)
		e.Member = e.Member && e.Include[i].Matched
	}
	for i := range r.exclude {
		e.Exclude[i] = r.exclude[i].explain(r.criteria.Exclude[i], p, n)
		e.Member = e.Member && !e.Exclude[i].Matched
	}
	return e
}

func (c *cond) explain(cr Criterion, p *Profile, now instant) CriterionResult {
	v := c.value(p)
	return CriterionResult{Criterion: cr, Matched: c.test(v, now) != c.neg, Present: v != nil, Value: v}
}

// NextFlip returns the earliest instant strictly after now at which the
// outcome of one of the rule's relative-date criteria changes for p, and
// false when none can: the rule has no relative-date criterion, or each one's
// field is missing or not a date, or has already flipped for good.
//
// The instant returned is the first one at which the criterion gives the
// other answer, so evaluating the rule at that instant sees the change. For
// "updatedAt <= now-30d" with updatedAt = T that is T+30d; for the strict
// "updatedAt < now-30d" the criterion is still false at exactly T+30d, so
// NextFlip returns T+30d plus one nanosecond. Likewise ">" flips at the
// boundary and ">=" one nanosecond after it.
func (r *Rule) NextFlip(p *Profile, now time.Time) (time.Time, bool) {
	if !r.relative {
		return time.Time{}, false
	}
	n := instantOf(now)
	var best instant
	found := false
	for i := range r.conds {
		if t, ok := r.conds[i].nextFlip(p, n); ok && (!found || t.compare(best) < 0) {
			best, found = t, true
		}
	}
	if !found {
		return time.Time{}, false
	}
	return best.time().In(now.Location()), true
}

// NextMembershipFlip is like NextFlip but returns false as soon as time alone
// cannot change whether p is a member: when an include criterion fails, or an
// exclude criterion matches, and that criterion has no flip ahead. A
// scheduler that re-evaluates members when their time-relative criteria flip
// can use it to skip users whose membership is already settled.
func (r *Rule) NextMembershipFlip(p *Profile, now time.Time) (time.Time, bool) {
	if !r.relative {
		return time.Time{}, false
	}
	n := instantOf(now)
	var best instant
	found := false
	for i := range r.conds {
		c := &r.conds[i]
		t, ok := c.nextFlip(p, n)
		if !ok {
			// A settled criterion that keeps p out settles membership.
			if c.test(c.value(p), n) == c.failIf {
				return time.Time{}, false
			}
			continue
		}
		if !found || t.compare(best) < 0 {
			best, found = t, true
		}
	}
	if !found {
		return time.Time{}, false
	}
	return best.time().In(now.Location()), true
}

// nextFlip returns when a relative-date criterion next changes for p, if it
// is one and ever does after now.
func (c *cond) nextFlip(p *Profile, now instant) (instant, bool) {
	if c.kind != kindRelative {
		return instant{}, false
	}
	s, ok := c.value(p).(string)
	if !ok {
		return instant{}, false
	}
	f, ok := parseTime(s)
	if !ok {
		return instant{}, false
	}
	// The criterion compares f with now+dur, so its boundary is the now at
	// which the two are equal.
	b := f.add(-c.dur)
	if c.op == opLT || c.op == opGTE {
		// Strict on the side the outcome moves to: it changes just after b.
		b = b.add(time.Nanosecond)
	}
	if b.compare(now) <= 0 {
		return instant{}, false
	}
	return b, true
}

// lookup returns the value at path in p, nil when absent or null or when the
// path crosses a value that is not an object.
func lookup(p *Profile, path []string) any {
	v := p.Get(path[0])
	if len(path) > 1 {
		v = descend(v, path[1:])
	}
	return v
}

// descend follows path into the objects below v.
func descend(v any, path []string) any {
	for _, k := range path {
		switch m := v.(type) {
		case map[string]any:
			v = m[k]
		default:
			return nil
		}
	}
	return v
}

// test evaluates the positive form of the operator against field value v;
// a missing field fails every positive operator.
func (c *cond) test(v any, now instant) bool {
	if v == nil {
		return false
	}
	switch c.fn {
	case fnExists:
		return true
	case fnEqString:
		s, ok := v.(string)
		return ok && s == c.str
	case fnEqual:
		return c.equal(v)
	case fnIn:
		return c.in(v)
	case fnContains:
		return c.contains(v)
	case fnOrderNumber:
		f, ok := toFloat(v)
		return ok && c.holds(compareFloat(f, c.num))
	case fnOrderDate, fnOrderRelative:
		s, ok := v.(string)
		if !ok {
			return false
		}
		t, ok := parseTime(s)
		if !ok {
			return false
		}
		if c.fn == fnOrderDate {
			return c.holds(t.compare(c.when))
		}
		return c.holds(t.compare(now.addOffset(c.off)))
	}
	return false
}

func compareFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// eqStr is a == b. Short strings, like most enumerated profile values, are
// compared in line byte by byte, which beats a call into the runtime.
func eqStr(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) > 16 {
		return a == b
	}
	b = b[:len(a)]
	for i := 0; i < len(a); i++ {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// holds reports whether an ordering operator holds for a comparison result.
func (c *cond) holds(cmp int) bool { return c.cmpOK&(1<<(cmp+1)) != 0 }

func (c *cond) equal(v any) bool {
	switch c.kind {
	case kindString:
		s, ok := v.(string)
		return ok && s == c.str
	case kindNumber:
		f, ok := toFloat(v)
		return ok && f == c.num
	case kindBool:
		b, ok := v.(bool)
		return ok && b == c.b
	}
	return jsonEqual(v, c.val)
}

func (c *cond) in(v any) bool {
	if arr, ok := v.([]any); ok {
		for _, e := range arr {
			if c.set.has(e) {
				return true
			}
		}
		return false
	}
	return c.set.has(v)
}

func (c *cond) contains(v any) bool {
	switch x := v.(type) {
	case string:
		return c.kind == kindString && strings.Contains(x, c.str)
	case []any:
		if c.kind == kindString {
			for _, e := range x {
				if s, ok := e.(string); ok && s == c.str {
					return true
				}
			}
			return false
		}
		for _, e := range x {
			if e != nil && c.equal(e) {
				return true
			}
		}
	}
	return false
}

func (s *valSet) has(e any) bool {
	switch x := e.(type) {
	case string:
		if s.strIndex != nil {
			_, ok := s.strIndex[x]
			return ok
		}
		for _, y := range s.strs {
			if x == y {
				return true
			}
		}
		return false
	case bool:
		return (x && s.hasTrue) || (!x && s.hasFalse)
	case nil:
		return s.hasNull
	}
	if f, ok := toFloat(e); ok {
		if s.numIndex != nil {
			_, ok := s.numIndex[f]
			return ok
		}
		for _, y := range s.nums {
			if f == y {
				return true
			}
		}
		return false
	}
	if s.otherIndex != nil {
		if k, ok := appendCanonical(nil, e); ok {
			_, ok := s.otherIndex[string(k)]
			return ok
		}
	}
	for _, y := range s.other {
		if jsonEqual(e, y) {
			return true
		}
	}
	return false
}

// appendCanonical appends to dst a key of JSON value v that two values
// share exactly when jsonEqual holds between them: numbers by value,
// object members sorted, null members left out. ok is false for a value
// of a type jsonEqual knows no equal of.
func appendCanonical(dst []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case nil:
		return append(dst, 'n'), true
	case bool:
		if x {
			return append(dst, 't'), true
		}
		return append(dst, 'f'), true
	case string:
		dst = strconv.AppendInt(append(dst, 's'), int64(len(x)), 10)
		return append(append(dst, ':'), x...), true
	case []any:
		dst = strconv.AppendInt(append(dst, '['), int64(len(x)), 10)
		dst = append(dst, ':')
		for _, e := range x {
			var ok bool
			if dst, ok = appendCanonical(dst, e); !ok {
				return dst, false
			}
		}
		return dst, true
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k, e := range x {
			if e != nil {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		dst = strconv.AppendInt(append(dst, '{'), int64(len(keys)), 10)
		dst = append(dst, ':')
		for _, k := range keys {
			dst = strconv.AppendInt(dst, int64(len(k)), 10)
			dst = append(append(dst, ':'), k...)
			var ok bool
			if dst, ok = appendCanonical(dst, x[k]); !ok {
				return dst, false
			}
		}
		return dst, true
	}
	f, ok := toFloat(v)
	if !ok {
		return dst, false
	}
	if f == 0 {
		f = 0 // -0 equals 0
	}
	return strconv.AppendFloat(append(dst, 'd'), f, 'g', -1, 64), true
}

// toFloat reads a JSON number: float64 from encoding/json, json.Number from a
// decoder with UseNumber, or a Go integer from a profile built in code. The
// float64 case is split out so that it inlines.
func toFloat(v any) (float64, bool) {
	if f, ok := v.(float64); ok {
		return f, true
	}
	return toFloatSlow(v)
}

func toFloatSlow(v any) (float64, bool) {
	switch x := v.(type) {
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case int32:
		return float64(x), true
	case float32:
		return float64(x), true
	case uint:
		return float64(x), true
	case uint64:
		return float64(x), true
	case uint32:
		return float64(x), true
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		return f, err == nil
	}
	return 0, false
}

// jsonEqual reports whether a and b are the same JSON value: numbers by
// value, arrays and objects deeply.
func jsonEqual(a, b any) bool {
	switch x := a.(type) {
	case nil:
		return b == nil
	case string:
		y, ok := b.(string)
		return ok && x == y
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		return objectEqual(x, b)
	}
	fa, ok := toFloat(a)
	if !ok {
		return false
	}
	fb, ok := toFloat(b)
	return ok && fa == fb
}

// objectEqual compares two objects as the contract reads them: a member
// that is null is a member that is missing (so {"vip": null} equals {}), as
// patches and the field index treat it.
func objectEqual(x map[string]any, b any) bool {
	y, ok := asObject(b)
	if !ok {
		return false
	}
	n := 0
	for k, xv := range x {
		if xv == nil {
			continue
		}
		n++
		yv, ok := y[k]
		if !ok || !jsonEqual(xv, yv) {
			return false
		}
	}
	for _, yv := range y {
		if yv != nil {
			n--
		}
	}
	return n == 0
}

func asObject(v any) (map[string]any, bool) {
	switch m := v.(type) {
	case map[string]any:
		return m, true
	}
	return nil, false
}
