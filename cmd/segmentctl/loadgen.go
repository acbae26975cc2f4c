package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/kafkaio"
)

// loadgen produces synthetic profile events: each user's first event is a
// full profile, later ones are mostly patches (points, xp, coins, tier,
// updatedAt, a custom field) with an occasional full profile. A chosen share
// of events moves points across 1,000 and tier across gold/bronze, which
// flips membership of segments such as "points >= 1000".
func loadgen(ctx context.Context, e env, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	rate := fs.Int("rate", 1000, "events per second (0: as fast as possible)")
	total := fs.Int("n", 10000, "events to produce (0: until interrupted)")
	users := fs.Int("users", 1000, "users per organisation")
	orgs := fs.Int("orgs", 1, "organisations")
	orgPrefix := fs.String("org-prefix", "load", "organisation ids are <prefix><n>, or the prefix alone with -orgs 1")
	flip := fs.Float64("flip", 0.1, "share of events that flip points across 1000 and tier across gold/bronze")
	full := fs.Float64("full", 0.1, "share of later events sent as full profiles")
	seed := fs.Uint64("seed", 1, "random seed")
	topic := fs.String("topic", e.profileTopic, "topic to produce to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *users < 1 || *orgs < 1 || *rate < 0 || *total < 0 {
		return fmt.Errorf("loadgen: -users and -orgs must be positive, -rate and -n not negative")
	}
	g := newGenerator(*orgPrefix, *orgs, *users, *flip, *full, *seed)
	w := kafkaio.NewWriter(e.brokers)
	defer w.Close()
	const batch = 500
	var tick <-chan time.Time
	if *rate > 0 {
		// One batch per tick keeps the average rate without a sleep loop.
		per := time.Duration(float64(time.Second) * batch / float64(*rate))
		t := time.NewTicker(max(per, time.Millisecond))
		defer t.Stop()
		tick = t.C
	}
	start := time.Now()
	sent := 0
	msgs := make([]kafka.Message, 0, batch)
	for *total == 0 || sent < *total {
		if tick != nil {
			select {
			case <-ctx.Done():
				return nil
			case <-tick:
			}
		} else if ctx.Err() != nil {
			return nil
		}
		n := batch
		if *total > 0 {
			n = min(n, *total-sent)
		}
		msgs = msgs[:0]
		now := time.Now()
		for range n {
			ev := g.next(now)
			v, err := events.EncodeProfileEvent(ev)
			if err != nil {
				return err
			}
			msgs = append(msgs, kafka.Message{Topic: *topic, Key: []byte(ev.UserID), Value: v})
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("loadgen: %w", err)
		}
		sent += n
	}
	el := time.Since(start)
	fmt.Fprintf(stdout, "produced %d events in %s (%.0f events/s)\n", sent, el.Round(time.Millisecond), float64(sent)/el.Seconds())
	return nil
}

type genUser struct {
	version int64
	high    bool
}

type generator struct {
	orgs       []string
	users      int
	flip, full float64
	rnd        *rand.Rand
	state      map[string]*genUser
	seq        int
}

func newGenerator(prefix string, orgs, users int, flip, full float64, seed uint64) *generator {
	g := &generator{users: users, flip: flip, full: full, rnd: rand.New(rand.NewPCG(seed, seed^0x5eed)), state: map[string]*genUser{}}
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

func (g *generator) next(now time.Time) events.ProfileEvent {
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

func (g *generator) points(st *genUser) int {
	if st.high {
		return 1000 + g.rnd.IntN(5000)
	}
	return g.rnd.IntN(1000)
}

func (g *generator) tier(st *genUser) string {
	if st.high {
		return "gold"
	}
	return "bronze"
}

func (g *generator) profile(st *genUser, now time.Time) map[string]any {
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
