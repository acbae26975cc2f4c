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
	version           int64
	high              bool
	points, xp, coins int
	fields            map[string]int
	testAccount, vip  bool
	createdAt, badges int
	cohort            int
}

// Generator produces a deterministic stream of synthetic profile events.
type Generator struct {
	orgs       []string
	users      int
	flip, full float64
	rnd        *rand.Rand
	state      map[string]*genUser
	seq        int
	// versionBase is added to every version: users' first events have
	// version versionBase+1.
	versionBase int64
}

// StartVersionsAt makes users' first events version base+1, so that a run
// started after another over the same users is not taken for late events.
func (g *Generator) StartVersionsAt(base int64) { g.versionBase = base }

// New returns a generator over users users in each of orgs organisations
// named from prefix; flip is the share of updates that move a user across
// points 1,000 and tier gold/bronze, full the share sent as full profiles.
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

// Create returns the creation of user number i of the first organisation,
// so that a run can seed every user before its updates.
func (g *Generator) Create(i int, now time.Time) events.ProfileEvent {
	g.seq++
	org, user := g.orgs[0], fmt.Sprintf("u%d", i)
	st := g.newUser()
	st.version = g.versionBase + 1
	g.state[org+"/"+user] = st
	return events.ProfileEvent{EventID: fmt.Sprintf("evt_%d_%d", now.UnixNano(), g.seq), Type: events.ProfileCreated, OrgID: org, UserID: user,
		Version: st.version, HasVersion: true, OccurredAt: now, Profile: g.profile(st, now)}
}

// Next returns the next event, stamped with now. Updates that do not flip
// move values by small steps, as real activity does, so they seldom cross
// a segment's threshold.
func (g *Generator) Next(now time.Time) events.ProfileEvent {
	g.seq++
	org := g.orgs[g.rnd.IntN(len(g.orgs))]
	user := fmt.Sprintf("u%d", g.rnd.IntN(g.users))
	key := org + "/" + user
	st := g.state[key]
	ev := events.ProfileEvent{EventID: fmt.Sprintf("evt_%d_%d", now.UnixNano(), g.seq), OrgID: org, UserID: user, HasVersion: true, OccurredAt: now}
	if st == nil {
		st = g.newUser()
		g.state[key] = st
		st.version = g.versionBase + 1
		ev.Version, ev.Type = st.version, events.ProfileCreated
		ev.Profile = g.profile(st, now)
		return ev
	}
	st.version++
	ev.Version, ev.Type = st.version, events.ProfileUpdated
	flip := g.rnd.Float64() < g.flip
	if flip {
		st.high = !st.high
		if st.high {
			st.points = 1000 + g.rnd.IntN(100)
		} else {
			st.points = 900 + g.rnd.IntN(100)
		}
	} else {
		st.points = g.step(st.points, 20, 0, 1<<30)
		if st.high {
			st.points = max(st.points, 1000)
		} else {
			st.points = min(st.points, 999)
		}
	}
	changes := map[string]any{"points": st.points, "updatedAt": now.UTC().Format(time.RFC3339)}
	switch g.rnd.IntN(4) {
	case 0:
		st.xp = g.step(st.xp, 50, 0, 1<<30)
		changes["xp"] = st.xp
	case 1:
		st.coins = g.step(st.coins, 5, 0, 499)
		changes["coins"] = st.coins
	case 2:
		f := fmt.Sprintf("f%d", g.rnd.IntN(50))
		st.fields[f] = g.step(st.fields[f], 3, 0, 99)
		changes["customFields."+f] = st.fields[f]
	}
	if flip {
		changes["tier"] = g.tier(st)
	}
	if g.rnd.Float64() < g.full {
		ev.Profile = g.profile(st, now)
		return ev
	}
	ev.Changes = changes
	return ev
}

// step moves v by up to d either way, within [lo, hi].
func (g *Generator) step(v, d, lo, hi int) int {
	return min(hi, max(lo, v+g.rnd.IntN(2*d+1)-d))
}

func (g *Generator) newUser() *genUser {
	st := &genUser{high: g.rnd.IntN(2) == 0, xp: g.rnd.IntN(10000), coins: g.rnd.IntN(500), fields: map[string]int{},
		testAccount: g.rnd.IntN(50) == 0, vip: g.rnd.IntN(10) == 0, createdAt: g.rnd.IntN(365 * 24), badges: g.rnd.IntN(32),
		cohort: g.rnd.IntN(100)}
	if st.high {
		st.points = 1000 + g.rnd.IntN(5000)
	} else {
		st.points = g.rnd.IntN(1000)
	}
	for range 3 {
		st.fields[fmt.Sprintf("f%d", g.rnd.IntN(50))] = g.rnd.IntN(100)
	}
	return st
}

func (g *Generator) tier(st *genUser) string {
	if st.high {
		return "gold"
	}
	return "bronze"
}

func (g *Generator) profile(st *genUser, now time.Time) map[string]any {
	cf := map[string]any{"vip": st.vip, "testAccount": st.testAccount, "cohort": st.cohort}
	for f, v := range st.fields {
		cf[f] = v
	}
	badges := []any{}
	for b := range 5 {
		if st.badges&(1<<b) != 0 {
			badges = append(badges, fmt.Sprintf("b%d", b))
		}
	}
	return map[string]any{
		"tier": g.tier(st), "points": st.points, "xp": st.xp, "coins": st.coins,
		"badges": badges, "email": fmt.Sprintf("user%d@example.com", st.createdAt),
		"customFields": cf,
		"createdAt":    now.Add(-time.Duration(st.createdAt) * time.Hour).UTC().Format(time.RFC3339),
		"updatedAt":    now.UTC().Format(time.RFC3339),
	}
}
