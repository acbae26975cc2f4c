package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/kafkaio"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// TestMain lets the end-to-end tests start this test binary as a real
// segmentd process (so that it can be killed with SIGKILL): with
// SEGMENTD_E2E_CHILD=1 it runs segmentd's run and exits.
func TestMain(m *testing.M) {
	if os.Getenv("SEGMENTD_E2E_CHILD") == "1" {
		ctx, stop := signalContext()
		err := run(ctx, nil, os.Getenv)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "segmentd:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// e2e is one organisation, its topics and segments on the real servers.
type e2e struct {
	t                         *testing.T
	brokers, redisAddrs       []string
	org, group                string
	profile, membershipT, dlq string
	defs                      *membership.Definitions
	sets                      *membership.Sets
	users                     *membership.Users
	rules                     map[string]*segment.Rule
}

func newE2E(t *testing.T, redisAddrs []string) *e2e {
	e := &e2e{t: t, brokers: testenv.Kafka(t), redisAddrs: redisAddrs, org: testenv.UniqueName(t, "org"), group: testenv.UniqueName(t, "group")}
	e.profile = testenv.UniqueName(t, "profiles")
	e.membershipT = testenv.UniqueName(t, "membership")
	e.dlq = testenv.UniqueName(t, "dlq")
	testenv.CreateTopic(t, e.brokers, e.profile, 6)
	testenv.CreateTopic(t, e.brokers, e.membershipT, 6)
	testenv.CreateTopic(t, e.brokers, e.dlq, 1)
	rdb := membership.NewClient(redisAddrs, membership.Auth{})
	t.Cleanup(func() { rdb.Close() })
	testenv.DropOrgWhenDone(t, rdb, e.org)
	e.defs, e.users, e.sets = membership.NewDefinitions(rdb), membership.NewUsers(rdb), membership.NewSets(rdb)
	e.rules = map[string]*segment.Rule{}
	for i, c := range []segment.Criteria{
		{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}},
		{Include: []segment.Criterion{{Field: "tier", Operator: "in", Value: []any{"gold", "platinum"}, HasValue: true}},
			Exclude: []segment.Criterion{{Field: "customFields.testAccount", Operator: "equals", Value: true, HasValue: true}}},
		{Include: []segment.Criterion{{Field: "customFields.f1", Operator: ">=", Value: 50.0, HasValue: true}}},
		{Include: []segment.Criterion{{Field: "xp", Operator: "<", Value: 5000.0, HasValue: true}, {Field: "badges", Operator: "contains", Value: "b1", HasValue: true}}},
		{Include: []segment.Criterion{{Field: "coins", Operator: "not_exists"}}},
		// Guarded segments (an include "equals" on a string, boolean or number),
		// whose rules the processor skips when the guard fails.
		{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}, {Field: "tier", Operator: "equals", Value: "gold", HasValue: true}}},
		{Include: []segment.Criterion{{Field: "customFields.testAccount", Operator: "equals", Value: false, HasValue: true}, {Field: "customFields.f1", Operator: ">=", Value: 50.0, HasValue: true}}},
		{Include: []segment.Criterion{{Field: "customFields.f1", Operator: "equals", Value: 42.0, HasValue: true}}},
	} {
		d, err := e.defs.Create(context.Background(), segment.Definition{OrgID: e.org, Name: fmt.Sprintf("s%d", i), Type: segment.TypeDynamic, Criteria: c, Status: segment.StatusReady})
		if err != nil {
			t.Fatal(err)
		}
		r, err := segment.Compile(c)
		if err != nil {
			t.Fatal(err)
		}
		e.rules[d.ID] = r
	}
	return e
}

// child is a segmentd process started from this test binary.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

func (e *e2e) startChild(name string) *child {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		"SEGMENTD_E2E_CHILD=1",
		"SEGMENTD_HTTP_ADDR="+addr,
		"SEGMENTD_KAFKA_BROKERS="+strings.Join(e.brokers, ","),
		"SEGMENTD_REDIS_ADDRS="+strings.Join(e.redisAddrs, ","),
		"SEGMENTD_PROFILE_TOPIC="+e.profile,
		"SEGMENTD_MEMBERSHIP_TOPIC="+e.membershipT,
		"SEGMENTD_DLQ_TOPIC="+e.dlq,
		"SEGMENTD_GROUP_ID="+e.group,
		"SEGMENTD_API_KEYS="+e.org+":sk_e2e_0123456789abcdef",
		"SEGMENTD_BATCH_SIZE=500",
	)
	logf, err := os.Create(e.t.TempDir() + "/" + name + ".log")
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(c.done) }()
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.done
		if e.t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			e.t.Logf("%s log (tail):\n%s", name, tailOf(string(b), 3000))
		}
	})
	return c
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (c *child) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("segmentd did not stop within 30 s of %v", sig)
	}
}

// stream is a deterministic mix of full profiles, patches and deletions
// over users, with versions rising per user.
func stream(org string, n, users int, seed uint64) []events.ProfileEvent {
	rnd := rand.New(rand.NewPCG(seed, 7))
	version := make([]int64, users)
	out := make([]events.ProfileEvent, 0, n)
	tiers := []string{"bronze", "silver", "gold", "platinum"}
	for i := range n {
		u := rnd.IntN(users)
		version[u]++
		ev := events.ProfileEvent{EventID: fmt.Sprintf("e%d", i), OrgID: org, UserID: fmt.Sprintf("u%d", u), Version: version[u], HasVersion: true, OccurredAt: time.Now()}
		switch x := rnd.IntN(100); {
		case version[u] == 1 || x < 10:
			ev.Type = events.ProfileUpdated
			p := map[string]any{"points": rnd.IntN(2000), "tier": tiers[rnd.IntN(4)], "xp": rnd.IntN(10000),
				"customFields": map[string]any{"f1": rnd.IntN(100), "testAccount": rnd.IntN(5) == 0}}
			if rnd.IntN(2) == 0 {
				p["coins"] = rnd.IntN(100)
			}
			if rnd.IntN(2) == 0 {
				p["badges"] = []any{"b1"}
			}
			ev.Profile = p
		case x < 12:
			ev.Type = events.ProfileDeleted
		default:
			ev.Type = events.ProfileUpdated
			ch := map[string]any{"points": rnd.IntN(2000)}
			switch rnd.IntN(5) {
			case 0:
				ch["tier"] = tiers[rnd.IntN(4)]
			case 1:
				ch["customFields.f1"] = rnd.IntN(100)
			case 2:
				ch["coins"] = nil
			case 3:
				ch["xp"] = rnd.IntN(10000)
			}
			ev.Changes = ch
		}
		out = append(out, ev)
	}
	return out
}

// expectTransitions replays the stream through a reference model that
// evaluates every segment on every event and returns the eventIds of all
// membership changes, and the final members of each segment.
func (e *e2e) expectTransitions(evs []events.ProfileEvent) (map[string]bool, map[string]map[string]bool) {
	profiles := map[string]*segment.Profile{}
	in := map[string]map[string]bool{} // segment -> users
	for id := range e.rules {
		in[id] = map[string]bool{}
	}
	ids := map[string]bool{}
	now := time.Now()
	ids2 := make([]string, 0, len(e.rules))
	for id := range e.rules {
		ids2 = append(ids2, id)
	}
	sort.Strings(ids2)
	for _, ev := range evs {
		var p *segment.Profile
		switch {
		case ev.Type == events.ProfileDeleted:
			p = nil
		case ev.Profile != nil:
			p = segment.NewProfile(ev.Profile)
		default:
			np, _, err := segment.ApplyChanges(profiles[ev.UserID], ev.Changes)
			if err != nil {
				e.t.Fatal(err)
			}
			p = np
		}
		profiles[ev.UserID] = p
		for _, id := range ids2 {
			m := p != nil && e.rules[id].Match(p, now)
			if m != in[id][ev.UserID] {
				c := events.Change{OrgID: e.org, SegmentID: id, UserID: ev.UserID, Entered: m, Cause: events.Cause{Type: events.CauseProfile, EventID: ev.EventID, Version: ev.Version}}
				ids[c.EventID()] = true
				if m {
					in[id][ev.UserID] = true
				} else {
					delete(in[id], ev.UserID)
				}
			}
		}
	}
	return ids, in
}

func (e *e2e) produce(evs []events.ProfileEvent) {
	e.t.Helper()
	w := kafkaio.NewWriter(e.brokers)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := 0; i < len(evs); i += 5000 {
		var msgs []kafka.Message
		for _, ev := range evs[i:min(i+5000, len(evs))] {
			v, err := events.EncodeProfileEvent(ev)
			if err != nil {
				e.t.Fatal(err)
			}
			msgs = append(msgs, kafka.Message{Topic: e.profile, Key: []byte(ev.UserID), Value: v})
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			e.t.Fatal(err)
		}
	}
}

// committed returns how many profile events the group has committed.
func (e *e2e) committed() int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(e.brokers...), Timeout: 10 * time.Second}
	res, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: e.group, Topics: map[string][]int{e.profile: {0, 1, 2, 3, 4, 5}}})
	if err != nil {
		return 0
	}
	var n int64
	for _, p := range res.Topics[e.profile] {
		if p.CommittedOffset > 0 {
			n += p.CommittedOffset
		}
	}
	return n
}

func (e *e2e) waitCommitted(want int64, timeout time.Duration) {
	e.t.Helper()
	var n int64
	// Each check asks Kafka: a slower poll than Eventually's.
	if !testenv.EventuallyEvery(timeout, 200*time.Millisecond, func() bool { n = e.committed(); return n >= want }) {
		e.t.Fatalf("committed %d of %d profile events after %s", n, want, timeout)
	}
}

// changeIDs reads the whole membership topic and returns its eventIds.
func (e *e2e) changeIDs(atLeast int) map[string]bool {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var mu sync.Mutex
	ids := map[string]bool{}
	total := 0
	var wg sync.WaitGroup
	cl := &kafka.Client{Addr: kafka.TCP(e.brokers...)}
	offs, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{e.membershipT: {
		kafka.LastOffsetOf(0), kafka.LastOffsetOf(1), kafka.LastOffsetOf(2), kafka.LastOffsetOf(3), kafka.LastOffsetOf(4), kafka.LastOffsetOf(5)}}})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, po := range offs.Topics[e.membershipT] {
		if po.LastOffset == 0 {
			continue
		}
		wg.Add(1)
		go func(part int, end int64) {
			defer wg.Done()
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: e.brokers, Topic: e.membershipT, Partition: part, MaxBytes: 8 << 20, MaxWait: 100 * time.Millisecond})
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					e.t.Errorf("read membership partition %d: %v", part, err)
					return
				}
				d, err := events.DecodeChange(m.Value)
				if err != nil {
					e.t.Errorf("decode change: %v", err)
				}
				// Instances run jobs for every organisation in Redis, and the
				// servers are shared by the whole test run: keep this test's own.
				mu.Lock()
				if d.OrgID == e.org {
					ids[d.EventID] = true
					total++
				}
				mu.Unlock()
				if m.Offset+1 >= end {
					return
				}
			}
		}(po.Partition, po.LastOffset)
	}
	wg.Wait()
	if total < atLeast {
		e.t.Fatalf("read %d change events, want at least %d", total, atLeast)
	}
	e.t.Logf("membership topic: %d events, %d distinct ids", total, len(ids))
	return ids
}

func (e *e2e) check(evs []events.ProfileEvent) {
	e.t.Helper()
	want, _ := e.expectTransitions(evs)
	got := e.changeIDs(len(want))
	missing, extra := 0, 0
	for id := range want {
		if !got[id] {
			missing++
		}
	}
	for id := range got {
		if !want[id] {
			extra++
		}
	}
	if missing > 0 || extra > 0 {
		e.t.Errorf("change events: %d transitions missing, %d unexpected (of %d expected)", missing, extra, len(want))
	}
	diffs, _, err := processor.Verify(context.Background(), e.defs, e.users, e.sets, time.Now(), e.org)
	if err != nil {
		e.t.Fatal(err)
	}
	for i, d := range diffs {
		if i == 20 {
			e.t.Errorf("… %d differences in all", len(diffs))
			break
		}
		e.t.Errorf("verify: %s", d)
	}
}

// TestCrashMidStream kills segmentd with SIGKILL in the middle of 100,000
// events, starts it again and lets it drain: membership must equal a
// from-scratch evaluation and every transition must have its change event.
func TestCrashMidStream(t *testing.T) {
	e := newE2E(t, []string{testenv.Redis(t)})
	const n = 100000
	evs := stream(e.org, n, 5000, 42)
	e.produce(evs)
	c := e.startChild("first")
	e.waitCommitted(n/4, 3*time.Minute)
	c.stop(t, syscall.SIGKILL)
	before := e.committed()
	if before >= n {
		t.Fatalf("everything was committed before the kill; the test proves nothing")
	}
	t.Logf("killed after %d of %d events were committed", before, n)
	c2 := e.startChild("second")
	e.waitCommitted(n, 5*time.Minute)
	c2.stop(t, syscall.SIGTERM)
	e.check(evs)
}

// TestTwoProcessesOneLeaves runs two segmentd processes in one group on
// Redis Cluster (on the embedded Redis in a run against the stand-ins: two
// local instances sharing one `make run`'s servers) and stops one
// mid-stream; the other takes its partitions over and nothing is lost.
func TestTwoProcessesOneLeaves(t *testing.T) {
	var e *e2e
	if testenv.Standins() {
		e = newE2E(t, []string{testenv.Redis(t)})
	} else {
		e = newE2E(t, testenv.RedisCluster(t))
	}
	const n = 40000
	evs := stream(e.org, n, 3000, 7)
	a := e.startChild("a")
	b := e.startChild("b")
	e.produce(evs[:n/2])
	e.waitCommitted(n/4, 3*time.Minute)
	a.stop(t, syscall.SIGTERM)
	e.produce(evs[n/2:])
	e.waitCommitted(n, 5*time.Minute)
	b.stop(t, syscall.SIGTERM)
	e.check(evs)
}
