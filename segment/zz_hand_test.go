package segment

import "testing"

func handMatch(p Profile, now instant, off offset) bool {
	t, _ := p["tier"].(string)
	if t != "gold" && t != "platinum" {
		return false
	}
	f, _ := p["points"].(float64)
	if !(f >= 1000) {
		return false
	}
	arr, _ := p["badges"].([]any)
	found := false
	for _, e := range arr {
		if s, ok := e.(string); ok && s == "b1" {
			found = true
			break
		}
	}
	if !found {
		return false
	}
	cf, _ := p["customFields"].(map[string]any)
	vip, _ := cf["vip"].(map[string]any)
	lvl, _ := vip["level"].(string)
	if lvl != "gold" {
		return false
	}
	s, _ := p["updatedAt"].(string)
	ts, ok := parseTime(s)
	return ok && ts.compare(now.addOffset(off)) < 0
}
func BenchmarkHand(b *testing.B) {
	p := benchProfile()
	n := instantOf(benchNow)
	off := offsetOf(-30 * 24 * 3600e9)
	if !handMatch(p, n, off) {
		b.Fatal()
	}
	for b.Loop() {
		sink = handMatch(p, n, off)
	}
}

var vGold, vPlat, vB1 = "gold", "platinum", "b1"
var kTier, kPoints, kBadges, kCF, kVip, kLevel, kUpd = "tier", "points", "badges", "customFields", "vip", "level", "updatedAt"

func hand2(p Profile, now instant, off offset) bool {
	t, _ := p[kTier].(string)
	if !eqStr(t, vGold) && !eqStr(t, vPlat) {
		return false
	}
	f, _ := p[kPoints].(float64)
	if !(f >= 1000) {
		return false
	}
	arr, _ := p[kBadges].([]any)
	found := false
	for _, e := range arr {
		if s, ok := e.(string); ok && eqStr(s, vB1) {
			found = true
			break
		}
	}
	if !found {
		return false
	}
	cf, _ := p[kCF].(map[string]any)
	vip, _ := cf[kVip].(map[string]any)
	lvl, _ := vip[kLevel].(string)
	if !eqStr(lvl, vGold) {
		return false
	}
	s, _ := p[kUpd].(string)
	ts, ok := parseRFC3339Fast(s)
	return ok && ts.compare(now.addOffset(off)) < 0
}
func BenchmarkHand2(b *testing.B) {
	p := benchProfile()
	n := instantOf(benchNow)
	off := offsetOf(-30 * 24 * 3600e9)
	if !hand2(p, n, off) {
		b.Fatal()
	}
	for b.Loop() {
		sink = hand2(p, n, off)
	}
}
func hand3(r *Rule, p Profile, now instant) bool {
	cs := r.conds
	c := &cs[0]
	t, _ := p[c.key].(string)
	ok := false
	for _, x := range c.inStrs {
		if eqStr(x, t) {
			ok = true
			break
		}
	}
	if !ok {
		return false
	}
	c = &cs[1]
	f, _ := p[c.key].(float64)
	if !c.holds(compareFloat(f, c.num)) {
		return false
	}
	c = &cs[2]
	arr, _ := p[c.key].([]any)
	found := false
	for _, e := range arr {
		if s, ok := e.(string); ok && eqStr(s, c.str) {
			found = true
			break
		}
	}
	if !found {
		return false
	}
	c = &cs[3]
	v := descend(p[c.key], c.rest)
	lvl, _ := v.(string)
	if !eqStr(lvl, c.str) {
		return false
	}
	c = &cs[4]
	s, _ := p[c.key].(string)
	ts, ok := parseRFC3339Fast(s)
	return ok && c.holds(ts.compare(now.addOffset(c.off)))
}
func BenchmarkHand3(b *testing.B) {
	r := MustCompile(benchCriteria())
	p := benchProfile()
	n := instantOf(benchNow)
	if !hand3(r, p, n) {
		b.Fatal()
	}
	for b.Loop() {
		sink = hand3(r, p, n)
	}
}
func hand4(r *Rule, p Profile, now instant) bool {
	cs := r.conds
	var vals [5]any
	for i := range cs {
		vals[i] = cs[i].value(p)
	}
	c := &cs[0]
	t, _ := vals[0].(string)
	ok := false
	for _, x := range c.inStrs {
		if eqStr(x, t) {
			ok = true
			break
		}
	}
	if !ok {
		return false
	}
	c = &cs[1]
	f, _ := vals[1].(float64)
	if !c.holds(compareFloat(f, c.num)) {
		return false
	}
	c = &cs[2]
	arr, _ := vals[2].([]any)
	found := false
	for _, e := range arr {
		if s, ok := e.(string); ok && eqStr(s, c.str) {
			found = true
			break
		}
	}
	if !found {
		return false
	}
	c = &cs[3]
	lvl, _ := vals[3].(string)
	if !eqStr(lvl, c.str) {
		return false
	}
	c = &cs[4]
	s, _ := vals[4].(string)
	ts, ok := parseRFC3339Fast(s)
	return ok && c.holds(ts.compare(now.addOffset(c.off)))
}
func BenchmarkHand4(b *testing.B) {
	r := MustCompile(benchCriteria())
	p := benchProfile()
	n := instantOf(benchNow)
	if !hand4(r, p, n) {
		b.Fatal()
	}
	for b.Loop() {
		sink = hand4(r, p, n)
	}
}
