package segment
import "testing"
func handMatch(p Profile, now instant, off offset) bool {
	t, _ := p["tier"].(string)
	if t != "gold" && t != "platinum" { return false }
	f, _ := p["points"].(float64)
	if !(f >= 1000) { return false }
	arr, _ := p["badges"].([]any)
	found := false
	for _, e := range arr { if s, ok := e.(string); ok && s == "b1" { found = true; break } }
	if !found { return false }
	cf, _ := p["customFields"].(map[string]any)
	vip, _ := cf["vip"].(map[string]any)
	lvl, _ := vip["level"].(string)
	if lvl != "gold" { return false }
	s, _ := p["updatedAt"].(string)
	ts, ok := parseTime(s)
	return ok && ts.compare(now.addOffset(off)) < 0
}
func BenchmarkHand(b *testing.B) {
	p := benchProfile(); n := instantOf(benchNow); off := offsetOf(-30*24*3600e9)
	if !handMatch(p, n, off) { b.Fatal() }
	for b.Loop() { sink = handMatch(p, n, off) }
}
