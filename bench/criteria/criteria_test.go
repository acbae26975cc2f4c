package criteria

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"
	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/interpreter"

	"github.com/segmentd/segmentd/segment"
)

// The rule: tier in ["gold","platinum"], points >= 1000, badges contains
// "b1", customFields.vip.level equals "gold", updatedAt < now-30d.
var rule = segment.Criteria{Include: []segment.Criterion{
	{Field: "tier", Operator: "in", Value: []any{"gold", "platinum"}, HasValue: true},
	{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true},
	{Field: "badges", Operator: "contains", Value: "b1", HasValue: true},
	{Field: "customFields.vip.level", Operator: "equals", Value: "gold", HasValue: true},
	{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true},
}}

// The same rule in each language. Both receive the profile as a dynamic map
// and the current time as a variable, as segmentd does.
const (
	celRule = `p.tier in ["gold", "platinum"] && p.points >= 1000.0 && "b1" in p.badges && ` +
		`p.customFields.vip.level == "gold" && timestamp(p.updatedAt) < now - duration("720h")`
	exprRule = `p.tier in ["gold", "platinum"] && p.points >= 1000 && "b1" in p.badges && ` +
		`p.customFields.vip.level == "gold" && date(p.updatedAt) < now - duration("720h")`
)

// profileJSON is a typical profile; it is in the segment. Each engine
// gets it decoded as it takes its input: segmentd as its decoder builds a
// stored profile, cel-go and expr as a map from encoding/json.
const profileJSON = `{
	"userId": "u_8f14e45f", "tier": "gold", "points": 1500, "xp": 12000, "coins": 250,
	"badges": ["b0", "b1", "b2"], "email": "ada@example.com",
	"createdAt": "2023-01-10T08:00:00Z", "updatedAt": "2024-01-15T10:30:00.123Z",
	"customFields": {"vip": {"level": "gold", "since": "2023-06-01T00:00:00Z"}, "region": "eu"}
}`

// profile returns profileJSON decoded by encoding/json.
func profile() map[string]any {
	var p map[string]any
	if err := json.Unmarshal([]byte(profileJSON), &p); err != nil {
		panic(err)
	}
	return p
}

var now = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)

var sink bool

func BenchmarkCriteria(b *testing.B) {
	p := profile()

	b.Run("segmentd", func(b *testing.B) {
		r, err := segment.Compile(rule)
		if err != nil {
			b.Fatal(err)
		}
		p, err := segment.DecodeProfile([]byte(profileJSON))
		if err != nil {
			b.Fatal(err)
		}
		if !r.Match(p, now) {
			b.Fatal("profile not matched")
		}
		b.ReportAllocs()
		for b.Loop() {
			sink = r.Match(p, now)
		}
	})

	b.Run("cel-go", func(b *testing.B) {
		env, err := cel.NewEnv(
			cel.Variable("p", cel.MapType(cel.StringType, cel.DynType)),
			cel.Variable("now", cel.TimestampType),
		)
		if err != nil {
			b.Fatal(err)
		}
		ast, iss := env.Compile(celRule)
		if iss.Err() != nil {
			b.Fatal(iss.Err())
		}
		prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize))
		if err != nil {
			b.Fatal(err)
		}
		// Building the activation once, outside the loop, favours cel-go.
		act, err := interpreter.NewActivation(map[string]any{"p": p, "now": now})
		if err != nil {
			b.Fatal(err)
		}
		if out, _, err := prg.Eval(act); err != nil || out.Value() != true {
			b.Fatalf("cel-go: %v, %v", out, err)
		}
		b.ReportAllocs()
		for b.Loop() {
			out, _, _ := prg.Eval(act)
			sink = out.Value() == true
		}
	})

	b.Run("expr", func(b *testing.B) {
		env := map[string]any{"p": p, "now": now}
		prg, err := expr.Compile(exprRule, expr.Env(env), expr.AsBool())
		if err != nil {
			b.Fatal(err)
		}
		var machine vm.VM
		if out, err := machine.Run(prg, env); err != nil || out != true {
			b.Fatalf("expr: %v, %v", out, err)
		}
		b.ReportAllocs()
		for b.Loop() {
			out, _ := machine.Run(prg, env)
			sink = out == true
		}
	})
}

// TestSameVerdicts checks that the three programs agree on profiles in and
// out of the segment, so the benchmark compares like with like.
func TestSameVerdicts(t *testing.T) {
	r := segment.MustCompile(rule)
	env, _ := cel.NewEnv(cel.Variable("p", cel.MapType(cel.StringType, cel.DynType)), cel.Variable("now", cel.TimestampType))
	ast, iss := env.Compile(celRule)
	if iss.Err() != nil {
		t.Fatal(iss.Err())
	}
	celPrg, err := env.Program(ast)
	if err != nil {
		t.Fatal(err)
	}
	exprPrg, err := expr.Compile(exprRule, expr.Env(map[string]any{"p": profile(), "now": now}), expr.AsBool())
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]func(p map[string]any){
		"member":         func(map[string]any) {},
		"silver":         func(p map[string]any) { p["tier"] = "silver" },
		"platinum":       func(p map[string]any) { p["tier"] = "platinum" },
		"few points":     func(p map[string]any) { p["points"] = 999.0 },
		"no badge":       func(p map[string]any) { p["badges"] = []any{"b2"} },
		"not vip":        func(p map[string]any) { p["customFields"].(map[string]any)["vip"] = map[string]any{"level": "silver"} },
		"recent":         func(p map[string]any) { p["updatedAt"] = "2024-05-20T00:00:00Z" },
		"30 days ago":    func(p map[string]any) { p["updatedAt"] = "2024-05-02T12:00:00Z" },
		"31 days ago":    func(p map[string]any) { p["updatedAt"] = "2024-05-01T12:00:00Z" },
		"offset updated": func(p map[string]any) { p["updatedAt"] = "2024-05-02T13:00:00+02:00" },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			p := profile()
			mutate(p)
			want := r.Match(segment.NewProfile(p), now)
			celOut, _, err := celPrg.Eval(map[string]any{"p": p, "now": now})
			if err != nil || celOut.Value() != want {
				t.Errorf("cel-go = %v (%v), segmentd = %v", celOut, err, want)
			}
			exprOut, err := expr.Run(exprPrg, map[string]any{"p": p, "now": now})
			if err != nil || exprOut != want {
				t.Errorf("expr = %v (%v), segmentd = %v", exprOut, err, want)
			}
		})
	}
}
