package processor_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/kafkaio"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// rig is one processor wired to real Kafka and Redis with topics and an
// organisation of the test's own.
type rig struct {
	brokers                   []string
	rdb                       redis.UniversalClient
	org                       string
	profile, membershipT, dlq string
	group                     string
	defs                      *membership.Definitions
	users                     *membership.Users
	// proc is the processor the last start made.
	proc *processor.Processor
}

func newRig(t *testing.T, rdb redis.UniversalClient) *rig {
	t.Helper()
	brokers := testenv.Kafka(t)
	r := &rig{brokers: brokers, rdb: rdb, org: testenv.Org(t, rdb, "org")}
	r.profile = testenv.UniqueName(t, "profiles")
	r.membershipT = testenv.UniqueName(t, "membership")
	r.dlq = testenv.UniqueName(t, "dlq")
	r.group = testenv.UniqueName(t, "group")
	testenv.CreateTopic(t, brokers, r.profile, 3)
	testenv.CreateTopic(t, brokers, r.membershipT, 3)
	testenv.CreateTopic(t, brokers, r.dlq, 1)
	r.defs = membership.NewDefinitions(rdb)
	r.users = membership.NewUsers(rdb)
	return r
}

func (r *rig) segment(t *testing.T, name string, c segment.Criteria) string {
	t.Helper()
	d, err := r.defs.Create(context.Background(), segment.Definition{OrgID: r.org, Name: name, Type: segment.TypeDynamic, Criteria: c, Status: segment.StatusReady})
	if err != nil {
		t.Fatal(err)
	}
	return d.ID
}

// start runs a processor until the returned stop is called.
func (r *rig) start(t *testing.T) (stop func()) {
	t.Helper()
	return r.startWith(t, func(c *processor.Config) {})
}

// startWith is start with the configuration changed by opt first.
func (r *rig) startWith(t *testing.T, opt func(*processor.Config)) (stop func()) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := processor.NewRegistry(r.defs, 100*time.Millisecond, log)
	ctx, cancel := context.WithCancel(context.Background())
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	reader := kafkaio.NewGroupReader(r.brokers, r.group, r.profile)
	writer := kafkaio.NewWriter(r.brokers)
	cfg := processor.Config{
		Fetcher: reader, Producer: kafkaio.NewProducer(writer), Users: r.users, Rules: reg, Scheduler: membership.NewSchedules(r.rdb),
		MembershipTopic: r.membershipT, DLQTopic: r.dlq, BatchSize: 200, BatchWait: 10 * time.Millisecond,
		Metrics: mustMetrics(t, prometheus.NewRegistry()), Logger: log,
	}
	opt(&cfg)
	p := processor.New(cfg)
	r.proc = p
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = reg.Run(ctx) }()
	go func() {
		defer wg.Done()
		if err := p.Run(ctx); err != nil {
			t.Errorf("processor: %v", err)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			reader.Close()
			writer.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

// mustMetrics returns the processor's metrics on reg.
func mustMetrics(tb testing.TB, reg prometheus.Registerer) *processor.Metrics {
	tb.Helper()
	m, err := processor.NewMetrics(reg)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// waitVersion waits until user's stored version is v and returns the
// user's state.
func (r *rig) waitVersion(t *testing.T, user string, v int64) membership.UserState {
	t.Helper()
	return r.waitState(t, user, func(st membership.UserState) bool { return st.Version == v })
}

// waitState polls user's stored state until ok accepts it.
func (r *rig) waitState(t *testing.T, user string, ok func(membership.UserState) bool) membership.UserState {
	t.Helper()
	var st membership.UserState
	loaded := func() bool {
		states, err := r.users.Load(context.Background(), []membership.UserRef{{OrgID: r.org, UserID: user}})
		if err != nil {
			t.Fatal(err)
		}
		st = states[0]
		return ok(st)
	}
	if !testenv.Eventually(30*time.Second, loaded) {
		t.Fatalf("state of %s not as wanted within 30 s: %+v", user, st)
	}
	return st
}

func (r *rig) produce(t *testing.T, values ...string) {
	t.Helper()
	w := kafkaio.NewWriter(r.brokers)
	defer w.Close()
	msgs := make([]kafka.Message, len(values))
	for i, v := range values {
		var k struct {
			UserID string `json:"userId"`
		}
		_ = json.Unmarshal([]byte(v), &k)
		msgs[i] = kafka.Message{Topic: r.profile, Key: []byte(k.UserID), Value: []byte(v), Time: time.Now()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

// topicPartitions returns the partitions of topic.
func topicPartitions(t *testing.T, brokers []string, topic string) []kafka.Partition {
	t.Helper()
	conn, err := kafka.Dial("tcp", brokers[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	return parts
}

// readAll reads every record that topic holds when it is called, from
// every partition, however long the readers take to start on a busy
// machine (up to a minute): for checks that nothing more was published
// than expected, once every publication has returned.
func readAll(t *testing.T, brokers []string, topic string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var ids []int
	for _, p := range topicPartitions(t, brokers, topic) {
		ids = append(ids, p.ID)
	}
	spans, err := kafkaio.Spans(ctx, brokers, topic, ids)
	if err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for p, span := range spans {
		if span.First >= span.End {
			continue
		}
		rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
		for {
			m, err := rd.ReadMessage(ctx)
			if err != nil {
				rd.Close()
				t.Fatalf("read %s partition %d up to offset %d: %v", topic, p, span.End, err)
			}
			out = append(out, m)
			if m.Offset >= span.End-1 {
				break
			}
		}
		rd.Close()
	}
	return out
}

// readTopic reads every partition of topic from the start until want
// records arrived (then a short grace for extras) or the timeout passed.
func readTopic(t *testing.T, brokers []string, topic string, want int, timeout time.Duration) []kafka.Message {
	t.Helper()
	parts := topicPartitions(t, brokers, topic)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var mu sync.Mutex
	var out []kafka.Message
	var wg sync.WaitGroup
	got := make(chan struct{}, 1<<20)
	for _, p := range parts {
		rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer rd.Close()
			for {
				m, err := rd.ReadMessage(ctx)
				if err != nil {
					return
				}
				mu.Lock()
				out = append(out, m)
				mu.Unlock()
				got <- struct{}{}
			}
		}()
	}
	n := 0
	for n < want {
		select {
		case <-got:
			n++
		case <-ctx.Done():
			wg.Wait()
			return out
		}
	}
	// Extras would be a bug; give them a moment to show up.
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	return out
}

func members(t *testing.T, rdb redis.UniversalClient, key string) string {
	return strings.Join(testenv.SMembers(t, rdb, key), ",")
}

func TestProcessorEventKinds(t *testing.T) {
	testenv.OnEachRedis(t, testEventKinds)
}

func testEventKinds(t *testing.T, rdb redis.UniversalClient) {
	r := newRig(t, rdb)
	a := r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	b := r.segment(t, "gold", segment.Criteria{
		Include: []segment.Criterion{{Field: "tier", Operator: "in", Value: []any{"gold", "platinum"}, HasValue: true}},
		Exclude: []segment.Criterion{{Field: "customFields.testAccount", Operator: "equals", Value: true, HasValue: true}},
	})
	r.start(t)
	o := r.org
	r.produce(t,
		`{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"tier":"gold","points":1200}}`,
		`{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":2,"changes":{"points":500}}`,
		`{"eventId":"e3","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":2,"changes":{"points":5000}}`,
		`{"eventId":"e4","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":1,"profile":{"tier":"bronze","points":9000}}`,
		`{"eventId":"e5","type":"profile.created","orgId":"`+o+`","userId":"u2","version":1,"profile":{"tier":"platinum","points":2000,"customFields":{"testAccount":true}}}`,
		`{"eventId":"e6","type":"profile.updated","orgId":"`+o+`","userId":"u2","version":2,"changes":{"customFields.testAccount":null}}`,
		`{"eventId":"e7","type":"profile.deleted","orgId":"`+o+`","userId":"u2","version":3}`,
		`not json at all`,
		`{"eventId":"e8","type":"profile.created","orgId":"`+o+`","version":1,"profile":{}}`,
		`{"eventId":"e9","type":"profile.created","orgId":"`+o+`","userId":"u3","version":1,"profile":{"points":1000}}`,
		`{"eventId":"e10","type":"profile.updated","orgId":"`+o+`","userId":"u3","version":2,"changes":{"points.x":1}}`,
		`{"eventId":"e11","type":"profile.updated","orgId":"`+o+`","userId":"u3","version":3,"changes":{"tier":"silver"}}`,
	)
	msgs := readTopic(t, r.brokers, r.membershipT, 8, 60*time.Second)
	var got []string
	for _, m := range msgs {
		d, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Key) != d.UserID || d.EventID != d.Change.EventID() {
			t.Errorf("key %q or eventId %q wrong for %+v", m.Key, d.EventID, d)
		}
		seg := map[string]string{a: "A", b: "B"}[d.SegmentID]
		got = append(got, d.UserID+" "+seg+" "+d.Direction()+" "+d.Cause.Type+":"+d.Cause.EventID)
	}
	sort.Strings(got)
	want := []string{
		"u1 A entered profile:e1", "u1 A exited profile:e2", "u1 B entered profile:e1",
		"u2 A entered profile:e5", "u2 A exited profile:e7", "u2 B entered profile:e6", "u2 B exited profile:e7",
		"u3 A entered profile:e9",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("change events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if g := members(t, rdb, membership.SegmentMembersKey(o, a)); g != "u3" {
		t.Errorf("members of A = %q, want u3", g)
	}
	if g := members(t, rdb, membership.SegmentMembersKey(o, b)); g != "u1" {
		t.Errorf("members of B = %q, want u1", g)
	}
	for user, want := range map[string]string{"u1": b, "u2": "", "u3": a} {
		if g := members(t, rdb, membership.UserSegmentsKey(o, user)); g != want {
			t.Errorf("segments of %s = %q, want %q", user, g, want)
		}
	}
	dl := readTopic(t, r.brokers, r.dlq, 3, 30*time.Second)
	if len(dl) != 3 {
		t.Fatalf("dead letters: %d, want 3", len(dl))
	}
	var reasons []string
	for _, m := range dl {
		h := map[string]string{}
		for _, x := range m.Headers {
			h[x.Key] = string(x.Value)
		}
		if h["segmentd-source-topic"] != r.profile || h["segmentd-source-offset"] == "" || h["segmentd-source-partition"] == "" {
			t.Errorf("dead letter headers: %v", h)
		}
		reasons = append(reasons, h["segmentd-error"])
	}
	sort.Strings(reasons)
	joined := strings.Join(reasons, "|")
	for _, frag := range []string{"not a JSON object", "userId: required", "changes"} {
		if !strings.Contains(joined, frag) {
			t.Errorf("dead-letter reasons %q lack %q", joined, frag)
		}
	}
	// u3's later valid event still applied after its bad patch.
	p, ok, err := r.users.Profile(context.Background(), o, "u3")
	if err != nil || !ok || p.Get("tier") != "silver" {
		t.Errorf("u3 profile = %v %v %v", p.Map(), ok, err)
	}
	diffs, _, err := processor.Verify(context.Background(), r.defs, r.users, membership.NewSets(r.rdb), time.Now(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diffs {
		if d.OrgID == o {
			t.Errorf("verify: %s", d)
		}
	}
}

// TestPatchUnderUserIDSameForNewAndExistingUser checks that a patch
// setting a value below userId ("userId.x") meets the same fate whether
// the user is new or already stored. userId is always the user's own id,
// a string, in every profile (README, Criteria): a path through it sets a
// value through a non-object, which is invalid input for every user, not
// only for one whose profile is already stored. Before, the existing
// user's patch was dead-lettered while the new user's was applied whole
// (its other paths included) and its userId.x silently dropped.
func TestPatchUnderUserIDSameForNewAndExistingUser(t *testing.T) {
	rdb := testenv.RedisClient(t)
	r := newRig(t, rdb)
	gold := r.segment(t, "gold", segment.Criteria{Include: []segment.Criterion{{Field: "tier", Operator: "equals", Value: "gold", HasValue: true}}})
	r.start(t)
	o := r.org
	r.produce(t,
		`{"eventId":"o1","type":"profile.created","orgId":"`+o+`","userId":"old","version":1,"profile":{"points":1}}`,
		`{"eventId":"o2","type":"profile.updated","orgId":"`+o+`","userId":"old","version":2,"changes":{"userId.x":1,"tier":"gold"}}`,
		`{"eventId":"n1","type":"profile.updated","orgId":"`+o+`","userId":"new","version":1,"changes":{"userId.x":1,"tier":"gold"}}`,
	)
	dl := readTopic(t, r.brokers, r.dlq, 2, 15*time.Second)
	dead := map[string]string{}
	for _, m := range dl {
		for _, h := range m.Headers {
			if h.Key == "segmentd-error" {
				dead[string(m.Key)] = string(h.Value)
			}
		}
	}
	if len(dead) != 2 {
		t.Errorf("dead letters for %v, want the patch of both the stored and the new user", dead)
	}
	if g := members(t, rdb, membership.SegmentMembersKey(o, gold)); g != "" {
		t.Errorf("members of gold = %q, want none: the patch is the same for both users", g)
	}
	if _, ok, err := r.users.Profile(context.Background(), o, "new"); err != nil || ok {
		t.Errorf("new user stored (%v, %v), want no profile from a dead-lettered patch", ok, err)
	}
}

// TestCriteriaOnUserID checks that a criterion on userId reads the id the
// events are keyed by, whatever a profile or a patch says it is.
func TestCriteriaOnUserID(t *testing.T) {
	rdb := testenv.RedisClient(t)
	r := newRig(t, rdb)
	seg := r.segment(t, "ids", segment.Criteria{Include: []segment.Criterion{{Field: "userId", Operator: "in", Value: []any{"u1", "u3"}, HasValue: true}}})
	r.start(t)
	o := r.org
	r.produce(t,
		`{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"tier":"gold"}}`,
		`{"eventId":"e2","type":"profile.created","orgId":"`+o+`","userId":"u2","version":1,"profile":{"userId":"u1"}}`,
		`{"eventId":"e3","type":"profile.created","orgId":"`+o+`","userId":"u3","version":1,"profile":{"points":1}}`,
		`{"eventId":"e4","type":"profile.updated","orgId":"`+o+`","userId":"u3","version":2,"changes":{"userId":"u9"}}`,
		`{"eventId":"e5","type":"profile.created","orgId":"`+o+`","userId":"u4","version":1,"profile":{"points":1}}`,
		`{"eventId":"e6","type":"profile.updated","orgId":"`+o+`","userId":"u4","version":2,"changes":{"userId":"u1"}}`,
	)
	r.waitVersion(t, "u3", 2)
	r.waitVersion(t, "u4", 2)
	var got []string
	for _, m := range readTopic(t, r.brokers, r.membershipT, 2, 30*time.Second) {
		d, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, d.UserID+" "+d.Direction()+" "+d.Cause.EventID)
	}
	sort.Strings(got)
	if g, want := strings.Join(got, ","), "u1 entered e1,u3 entered e3"; g != want {
		t.Errorf("change events %q, want %q", g, want)
	}
	if g := members(t, rdb, membership.SegmentMembersKey(o, seg)); g != "u1,u3" {
		t.Errorf("members = %q, want u1,u3", g)
	}
	// Stored with it, too: what the profile's byte form says, not only
	// what readers make of it.
	for _, user := range []string{"u2", "u3"} {
		raw, err := rdb.HGet(context.Background(), membership.ProfileKey(o, user), "p").Result()
		if err != nil {
			t.Fatal(err)
		}
		if p, err := segment.DecodeProfile(raw); err != nil || p.Get("userId") != user {
			t.Errorf("stored profile of %s: userId %v (%v), want its own id", user, p.Get("userId"), err)
		}
	}
}

// TestUnreadableStateGoesToDLQ checks that a user whose stored state cannot
// be decoded holds up no one: its events go to the DLQ with the reason and
// the key to repair, the state is left as it is, and the others' events
// apply.
func TestUnreadableStateGoesToDLQ(t *testing.T) {
	for name, damage := range map[string]func(ctx context.Context, rdb redis.UniversalClient, org string) (key string, err error){
		"bad version": func(ctx context.Context, rdb redis.UniversalClient, org string) (string, error) {
			key := membership.ProfileKey(org, "bad")
			return key, rdb.HSet(ctx, key, "r", "1", "v", "not a number").Err()
		},
		"profile key of another type": func(ctx context.Context, rdb redis.UniversalClient, org string) (string, error) {
			key := membership.ProfileKey(org, "bad")
			return key, rdb.Set(ctx, key, "written by hand", 0).Err()
		},
		"segment set of another type": func(ctx context.Context, rdb redis.UniversalClient, org string) (string, error) {
			key := membership.UserSegmentsKey(org, "bad")
			return key, rdb.Set(ctx, key, "written by hand", 0).Err()
		},
	} {
		t.Run(name, func(t *testing.T) {
			rdb := testenv.RedisClient(t)
			r := newRig(t, rdb)
			ctx := context.Background()
			a := r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
			key, err := damage(ctx, rdb, r.org)
			if err != nil {
				t.Fatal(err)
			}
			dump := func() string { return rdb.Dump(ctx, key).Val() }
			before := dump()
			r.start(t)
			o := r.org
			r.produce(t,
				`{"eventId":"e1","type":"profile.updated","orgId":"`+o+`","userId":"bad","version":2,"profile":{"points":2000}}`,
				`{"eventId":"e2","type":"profile.created","orgId":"`+o+`","userId":"good","version":1,"profile":{"points":2000}}`,
			)
			r.waitVersion(t, "good", 1)
			// The write comes before the projection onto the segment's set.
			var g string
			if !testenv.Eventually(10*time.Second, func() bool { g = members(t, rdb, membership.SegmentMembersKey(o, a)); return g == "good" }) {
				t.Errorf("members = %q, want good", g)
			}
			dl := readTopic(t, r.brokers, r.dlq, 1, 30*time.Second)
			if len(dl) != 1 || string(dl[0].Key) != "bad" {
				t.Fatalf("dead letters: %v, want the one event of bad", dl)
			}
			var reason string
			for _, h := range dl[0].Headers {
				if h.Key == "segmentd-error" {
					reason = string(h.Value)
				}
			}
			if !strings.Contains(reason, "unreadable") || !strings.Contains(reason, membership.ProfileKey(o, "bad")) {
				t.Errorf("reason %q names neither the problem nor the user's key", reason)
			}
			if dump() != before {
				t.Errorf("the unreadable state %s was changed; it must be left alone", key)
			}
		})
	}
}

// TestUserSetDamagedAfterCaching: a user's segment set damaged after the
// processor cached the user is found by the write itself, which must then
// leave the user's state as it was (the event goes to the DLQ), so that the
// README's repair, deleting the key and replaying the dead letter, applies
// the event whole.
func TestUserSetDamagedAfterCaching(t *testing.T) {
	rdb := testenv.RedisClient(t)
	r := newRig(t, rdb)
	ctx := context.Background()
	a := r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	r.start(t)
	o := r.org
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"bad","version":1,"profile":{"points":10}}`)
	r.waitVersion(t, "bad", 1)
	setKey, profKey := membership.UserSegmentsKey(o, "bad"), membership.ProfileKey(o, "bad")
	if err := rdb.Set(ctx, setKey, "written by hand", 0).Err(); err != nil {
		t.Fatal(err)
	}
	before := rdb.Dump(ctx, profKey).Val()
	e2 := `{"eventId":"e2","type":"profile.updated","orgId":"` + o + `","userId":"bad","version":2,"changes":{"points":2000}}`
	r.produce(t, e2)
	if dl := readTopic(t, r.brokers, r.dlq, 1, 30*time.Second); len(dl) != 1 {
		t.Fatalf("dead letters: %d, want e2's", len(dl))
	}
	if rdb.Dump(ctx, profKey).Val() != before {
		t.Errorf("the user's hash changed although its event was dead-lettered")
	}
	if err := rdb.Del(ctx, setKey).Err(); err != nil {
		t.Fatal(err)
	}
	r.produce(t, e2)
	r.waitVersion(t, "bad", 2)
	r.waitState(t, "bad", func(st membership.UserState) bool { return slices.Contains(st.Segments, a) })
	if !testenv.Eventually(30*time.Second, func() bool { return members(t, rdb, membership.SegmentMembersKey(o, a)) == "bad" }) {
		t.Fatalf("members = %q after the repair and the replay, want bad", members(t, rdb, membership.SegmentMembersKey(o, a)))
	}
}

// TestBatchStepsObservedOnce: a batch's steps are each observed once, and
// its size once, commit included.
func TestBatchStepsObservedOnce(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	reg := prometheus.NewRegistry()
	r.startWith(t, func(c *processor.Config) { c.Metrics = mustMetrics(t, reg) })
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+r.org+`","userId":"u1","version":1,"profile":{"points":2000}}`)
	counts := func() map[string]uint64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]uint64{}
		for _, mf := range mfs {
			switch mf.GetName() {
			case "segmentd_batch_step_seconds":
				for _, m := range mf.GetMetric() {
					out[m.GetLabel()[0].GetValue()] = m.GetHistogram().GetSampleCount()
				}
			case "segmentd_batch_events":
				out["batches"] = mf.GetMetric()[0].GetHistogram().GetSampleCount()
			}
		}
		return out
	}
	// Whether the commit was seen or not, got is checked below.
	var got map[string]uint64
	testenv.Eventually(30*time.Second, func() bool { got = counts(); return got["commit"] > 0 })
	// No segment reads a relative date: the batch stores no timer, and the
	// schedule step's series stays at the 0 it starts with.
	want := map[string]uint64{"batches": 1, "decode": 1, "load": 1, "evaluate": 1, "write": 1, "project": 1, "publish": 1, "commit": 1, "schedule": 0}
	if !maps.Equal(got, want) {
		t.Errorf("observations %v, want %v", got, want)
	}
}

// TestHugeInvalidRecordIsDeadLettered produces invalid records near the
// broker's size limit: their dead letters, with headers, would not fit
// whole, so they are cut and say so, and the partition goes on. The second
// one's reason quotes its (huge) type.
func TestHugeInvalidRecordIsDeadLettered(t *testing.T) {
	rdb := testenv.RedisClient(t)
	r := newRig(t, rdb)
	r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	r.start(t)
	huge := `{"userId":"big","junk":"` + strings.Repeat("x", 999_820) + `"`
	hugeType := `{"eventId":"e0","type":"` + strings.Repeat("x", 990_000) + `","orgId":"` + r.org + `","userId":"big","version":1,"profile":{}}`
	r.produce(t, huge, hugeType, `{"eventId":"e1","type":"profile.created","orgId":"`+r.org+`","userId":"after","version":1,"profile":{"points":2000}}`)
	r.waitVersion(t, "after", 1)
	dl := readTopic(t, r.brokers, r.dlq, 2, 30*time.Second)
	if len(dl) != 2 {
		t.Fatalf("dead letters: %d, want 2", len(dl))
	}
	for i, in := range []string{huge, hugeType} {
		h := map[string]string{}
		for _, x := range dl[i].Headers {
			h[x.Key] = string(x.Value)
		}
		if h["segmentd-truncated-from"] != strconv.Itoa(len(in)) || len(dl[i].Value) >= len(in) || h["segmentd-error"] == "" || len(h["segmentd-error"]) > 3000 {
			t.Errorf("dead letter %d: %d bytes, reason of %d bytes, headers %.300v", i, len(dl[i].Value), len(h["segmentd-error"]), h)
		}
	}
}

// TestDeadLetterRefusedForItsSizeStillMovesOn runs with a DLQ topic whose
// record limit (max.message.bytes) is below an invalid record that the
// profile topic took: the dead letter goes to the DLQ without its value
// (the headers still say where the record is and how long it was), the
// partition moves on to the valid event behind it, and that event's change
// is published (repeated once at most, by the retry), rather than the batch
// being retried for ever with its change events published again at each
// attempt.
func TestDeadLetterRefusedForItsSizeStillMovesOn(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	r.dlq = testenv.UniqueName(t, "smalldlq")
	cl := &kafka.Client{Addr: kafka.TCP(r.brokers...), Timeout: 10 * time.Second}
	resp, err := cl.CreateTopics(context.Background(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: r.dlq, NumPartitions: 1, ReplicationFactor: 1,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: "4000"}}}}})
	if err == nil {
		err = resp.Errors[r.dlq]
	}
	if err != nil {
		t.Fatal(err)
	}
	testenv.CreateTopic(t, r.brokers, r.dlq, 1) // waits for its leader
	r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	r.start(t)
	big := `{"userId":"u1","junk":"` + strings.Repeat("x", 8000) + `"}`
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+r.org+`","userId":"u1","version":1,"profile":{"points":2000}}`, big,
		`{"eventId":"e2","type":"profile.updated","orgId":"`+r.org+`","userId":"u1","version":2,"changes":{"tier":"gold"}}`)
	r.waitCommitted(t, 3)
	dl := readTopic(t, r.brokers, r.dlq, 1, 30*time.Second)
	if len(dl) != 1 {
		t.Fatalf("dead letters: %d, want 1", len(dl))
	}
	h := map[string]string{}
	for _, x := range dl[0].Headers {
		h[x.Key] = string(x.Value)
	}
	if h["segmentd-truncated-from"] != strconv.Itoa(len(big)) || h["segmentd-error"] == "" || h["segmentd-source-offset"] != "1" {
		t.Errorf("dead letter: %d bytes, headers %v", len(dl[0].Value), h)
	}
	// The attempt the DLQ refused may have published the change already:
	// the retry repeats it once, under the same id.
	chg := readAll(t, r.brokers, r.membershipT)
	ids := map[string]bool{}
	for _, m := range chg {
		c, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		ids[c.EventID] = true
	}
	if len(chg) == 0 || len(chg) > 2 || len(ids) != 1 {
		t.Errorf("%d change events published with %d ids, want u1's entry once (twice at most, with one id)", len(chg), len(ids))
	}
}

// TestBatchBytesBounded produces a backlog of 30 records of ~800 KB: a
// batch takes at most MaxBatchBytes of them (and one record), not
// BatchSize, since every stage of the pipeline holds a batch. The long
// BatchWait would otherwise gather the whole backlog in one batch.
func TestBatchBytesBounded(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	pad := strings.Repeat("x", 800_000)
	var values []string
	for i := range 30 {
		values = append(values, `{"type":"profile.created","orgId":"`+r.org+`","userId":"u`+strconv.Itoa(i)+`","profile":{"points":2000,"customFields":{"bio":"`+pad+`"}}}`)
	}
	r.produce(t, values...)
	reg := prometheus.NewRegistry()
	r.startWith(t, func(c *processor.Config) {
		c.BatchSize, c.BatchWait, c.Metrics = 2000, 3*time.Second, mustMetrics(t, reg)
	})
	r.waitCommitted(t, 30)
	h := snapshotHistogram(t, reg, "segmentd_batch_events")
	if want := (30*800_000)/processor.MaxBatchBytes + 1; h.GetSampleSum() != 30 || h.GetSampleCount() < uint64(want) {
		t.Errorf("%v events in %d batches, want 30 in at least %d", h.GetSampleSum(), h.GetSampleCount(), want)
	}
}
