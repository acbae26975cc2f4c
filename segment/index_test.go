package segment

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestIndexAppendAffected(t *testing.T) {
	ix := NewIndex(map[string][]string{
		"vip":      {"customFields.vip.level", "points"},
		"vip-any":  {"customFields.vip"},
		"custom":   {"customFields"},
		"region":   {"customFields.region"},
		"tier":     {"tier", "tier"},
		"tier2":    {"tier", "points"},
		"nothing":  nil,
		"prefixes": {"custom", "customFieldsX"},
	})
	if ix.Len() != 8 {
		t.Errorf("Len = %d, want 8", ix.Len())
	}
	tests := map[string]struct {
		dst     []string
		changed []string
		want    []string
	}{
		"no change":           {nil, nil, nil},
		"unread field":        {nil, []string{"email"}, nil},
		"exact":               {nil, []string{"tier"}, []string{"tier", "tier2"}},
		"exact shared":        {nil, []string{"points"}, []string{"tier2", "vip"}},
		"parent changed":      {nil, []string{"customFields"}, []string{"custom", "region", "vip", "vip-any"}},
		"middle changed":      {nil, []string{"customFields.vip"}, []string{"custom", "vip", "vip-any"}},
		"leaf changed":        {nil, []string{"customFields.vip.level"}, []string{"custom", "vip", "vip-any"}},
		"below leaf changed":  {nil, []string{"customFields.vip.level.x"}, []string{"custom", "vip", "vip-any"}},
		"sibling changed":     {nil, []string{"customFields.region"}, []string{"custom", "region"}},
		"unread nested":       {nil, []string{"customFields.other"}, []string{"custom"}},
		"not a dotted prefix": {nil, []string{"customFieldsX"}, []string{"prefixes"}},
		"dedup across paths":  {nil, []string{"points", "customFields.vip.level", "tier", "points"}, []string{"custom", "tier", "tier2", "vip", "vip-any"}},
		"appends to dst":      {[]string{"z", "a"}, []string{"tier"}, []string{"z", "a", "tier", "tier2"}},
		"keeps dst as is":     {[]string{"tier"}, []string{"tier"}, []string{"tier", "tier", "tier2"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			dst := slices.Clone(tt.dst)
			if got := ix.AppendAffected(dst, tt.changed); !slices.Equal(got, tt.want) {
				t.Errorf("AppendAffected = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestIndexFromRules(t *testing.T) {
	rules := map[string]*Rule{
		"a": MustCompile(inc(cr("customFields.vip.level", OpEquals, "gold"))),
		"b": MustCompile(exc(cr("points", OpLess, 10))),
	}
	fields := make(map[string][]string)
	for id, r := range rules {
		fields[id] = r.Fields()
	}
	ix := NewIndex(fields)
	old := pmap{"points": 5.0, "customFields": map[string]any{"vip": map[string]any{"level": "gold"}}}
	_, changed, err := ApplyChanges(NewProfile(old), map[string]any{"customFields.vip.level": "silver"})
	if err != nil {
		t.Fatal(err)
	}
	if got := ix.AppendAffected(nil, changed); !slices.Equal(got, []string{"a"}) {
		t.Errorf("affected = %q, want [a]", got)
	}
}

func TestIndexEmptyAndConcurrent(t *testing.T) {
	if got := NewIndex(nil).AppendAffected(nil, []string{"a"}); got != nil || NewIndex(nil).Len() != 0 {
		t.Errorf("empty index: %q", got)
	}
	ix := NewIndex(map[string][]string{"s1": {"a.b"}, "s2": {"a"}})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			buf := make([]string, 0, 4)
			for range 1000 {
				if got := ix.AppendAffected(buf[:0], []string{"a.b.c", "a"}); !slices.Equal(got, []string{"s1", "s2"}) {
					t.Errorf("AppendAffected = %q", got)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestIndexAppendAffectedAllocations(t *testing.T) {
	ix := NewIndex(map[string][]string{"s1": {"a.b"}, "s2": {"a"}, "s3": {"c"}})
	buf := make([]string, 0, 16)
	if n := testing.AllocsPerRun(100, func() { buf = ix.AppendAffected(buf[:0], []string{"a.b", "c"}) }); n != 0 {
		t.Errorf("AppendAffected allocates %v times with room in dst", n)
	}
}

// TestIndexMemo asks for more combinations of changed paths than the memo
// keeps, some too long for it, each twice and with a prefix in dst: every
// answer must be the merge's.
func TestIndexMemo(t *testing.T) {
	fields := map[string][]string{}
	for i := range 50 {
		fields[fmt.Sprintf("s%02d", i)] = []string{fmt.Sprintf("customFields.f%d", i%7), []string{"points", "xp", "tier"}[i%3]}
	}
	ix := NewIndex(fields)
	long := "customFields." + strings.Repeat("x", memoKeyMax)
	var combos [][]string
	for i := range memoMax + 200 {
		combos = append(combos, []string{fmt.Sprintf("customFields.f%d", i%9), "points", fmt.Sprintf("customFields.g%d", i)})
	}
	combos = append(combos, []string{long, "xp"}, []string{"xp", "customFields"}, []string{"customFields", "xp"}, nil)
	for round := range 2 {
		for _, c := range combos {
			want := ix.appendAffected([]int32{-1}, c)
			if got := ix.AppendAffectedIndex([]int32{-1}, c); !slices.Equal(got, want) {
				t.Fatalf("round %d, %q: AppendAffectedIndex = %v, want %v", round, c, got, want)
			}
		}
	}
	if n := len(*ix.memo.Load()); n != memoMax {
		t.Errorf("memo holds %d combinations, want the bound %d", n, memoMax)
	}
}

// TestIndexDeepField indexes a rule reading a field 100,000 keys deep (as a
// criterion of 200 KB may): changes of the field, of a path above it and
// of one below it affect the segment, a sibling's does not.
func TestIndexDeepField(t *testing.T) {
	deep := "customFields" + strings.Repeat(".a", 100_000)
	ix := NewIndex(map[string][]string{"seg_deep": {deep}, "seg_tier": {"tier", "customFields.b"}})
	for _, tt := range []struct {
		changed string
		want    []string
	}{
		{deep, []string{"seg_deep"}},
		{deep + ".x", []string{"seg_deep"}},
		{"customFields.a.a", []string{"seg_deep"}},
		{"customFields", []string{"seg_deep", "seg_tier"}},
		{"customFields.b.c", []string{"seg_tier"}},
		{"customFields.a.b", nil},
	} {
		if got := ix.AppendAffected(nil, []string{tt.changed}); !slices.Equal(got, tt.want) {
			t.Errorf("%.40q: %q, want %q", tt.changed, got, tt.want)
		}
	}
}

// BenchmarkNewIndexDeepField indexes one rule reading a field d keys deep.
// An index of every prefix of the path hashed each prefix whole: 1.8 s
// for a path of 128,000 keys (256 KB, the most a segment's criteria take),
// on every instance at each load of the organisation's definitions.
func BenchmarkNewIndexDeepField(b *testing.B) {
	for _, d := range []int{16_000, 32_000, 64_000, 128_000} {
		fields := map[string][]string{"seg_1": {"customFields" + strings.Repeat(".a", d)}}
		b.Run(fmt.Sprint(d), func(b *testing.B) {
			for b.Loop() {
				NewIndex(fields)
			}
		})
	}
}
