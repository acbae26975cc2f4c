// Package loadgen generates synthetic profile events for load runs and
// benchmarks: each user's first event is a full profile, later ones are
// mostly patches (points, xp, coins, tier, updatedAt, a custom field) with an
// occasional full profile; a chosen share moves points across 1,000 and tier
// across gold/bronze, flipping segments such as "points >= 1000".
package loadgen

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/segmentd/segmentd/events"
)

type genUser struct {
	version int64
	high    bool
}

// Generator produces a deterministic stream of synthetic profile events.
type Generator struct {
	orgs       []string
	users      int
	flip, full float64
	rnd        *rand.Rand
	state      map[string]*genUser
	seq        int
}

// New returns a generator over users users in each of orgs organisations
// named from prefix; flip and full are the shares of events that flip
// membership and that carry a full profile.
func New(prefix string, orgs, users int, flip, full float64, seed uint64) *Generator {
	g := &Generator{users: users, flip: flip, full: full, rnd: rand.New(rand.NewPCG(seed, seed^0x5eed)), state: map[string]*genUser{}}
	if orgs == 1 {
		g.orgs = []string{prefix}
	} else {
		for i := range orgs {
			g.orgs = append(g.orgs, fmt.Sprintf("%s%d", prefix, i))
		}
	}
	return g
}

var tiers = []string{"bronze", "silver", "gold", "platinum"}

// Next returns the next event, stamped with now.
func (g *Generator) Next(now time.Time) events.ProfileEvent {
	g.seq++
	org := g.orgs[g.rnd.IntN(len(g.orgs))]
	user := fmt.Sprintf("u%d", g.rnd.IntN(g.users))
	key := org + "/" + user
	st := g.state[key]
	ev := events.ProfileEvent{EventID: fmt.Sprintf("evt_%d_%d", now.UnixNano(), g.seq), OrgID: org, UserID: user, HasVersion: true, OccurredAt: now}
	flip := g.rnd.Float64() < g.flip
	if st == nil {
		st = &genUser{high: g.rnd.IntN(2) == 0}
		g.state[key] = st
		st.version = 1
		ev.Version, ev.Type = 1, events.ProfileCreated
		ev.Profile = g.profile(st, now)
		return ev
	}
	st.version++
	ev.Version, ev.Type = st.version, events.ProfileUpdated
	if flip {
		st.high = !st.high
	}
	if g.rnd.Float64() < g.full {
		ev.Profile = g.profile(st, now)
		return ev
	}
	ev.Changes = map[string]any{"points": g.points(st), "updatedAt": now.UTC().Format(time.RFC3339)}
	switch g.rnd.IntN(4) {
	case 0:
		ev.Changes["xp"] = g.rnd.IntN(10000)
	case 1:
		ev.Changes["coins"] = g.rnd.IntN(500)
	case 2:
		ev.Changes[fmt.Sprintf("customFields.f%d", g.rnd.IntN(50))] = g.rnd.IntN(100)
	}
	if flip {
		ev.Changes["tier"] = g.tier(st)
	}
	return ev
}

func (g *Generator) points(st *genUser) int {
	if st.high {
		return 1000 + g.rnd.IntN(5000)
	}
	return g.rnd.IntN(1000)
}

func (g *Generator) tier(st *genUser) string {
	if st.high {
		return "gold"
	}
	return "bronze"
}

func (g *Generator) profile(st *genUser, now time.Time) map[string]any {
	cf := map[string]any{"vip": g.rnd.IntN(10) == 0, "testAccount": g.rnd.IntN(50) == 0}
	for range 3 {
		cf[fmt.Sprintf("f%d", g.rnd.IntN(50))] = g.rnd.IntN(100)
	}
	badges := []any{}
	for b := range 5 {
		if g.rnd.IntN(3) == 0 {
			badges = append(badges, fmt.Sprintf("b%d", b))
		}
	}
	return map[string]any{
		"tier": g.tier(st), "points": g.points(st), "xp": g.rnd.IntN(10000), "coins": g.rnd.IntN(500),
		"badges": badges, "email": fmt.Sprintf("user%d@example.com", g.rnd.IntN(1<<20)),
		"customFields": cf,
		"createdAt":    now.Add(-time.Duration(g.rnd.IntN(365*24)) * time.Hour).UTC().Format(time.RFC3339),
		"updatedAt":    now.UTC().Format(time.RFC3339),
		"lastLogin":    tiers[g.rnd.IntN(len(tiers))],
	}
}
