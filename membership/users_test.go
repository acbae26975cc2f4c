package membership_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
)

// TestWriteUsers writes more users than one script call takes on a single
// Redis, some of them from a stale revision, and checks each user's outcome
// and stored state: a reply must land on the user it belongs to.
func TestWriteUsers(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		users := membership.NewUsers(rdb)
		const n = 250
		stale := func(i int) bool { return i%7 == 3 }
		ws := make([]membership.UserWrite, n)
		refs := make([]membership.UserRef, n)
		for i := range ws {
			id := fmt.Sprintf("u%03d", i)
			ws[i] = membership.UserWrite{OrgID: org, UserID: id, Version: int64(i), Profile: []byte(`{"points":1}`),
				Add: []string{"seg_a", fmt.Sprintf("seg_%d", i)}}
			if stale(i) {
				ws[i].ExpectRev = 4
			}
			refs[i] = membership.UserRef{OrgID: org, UserID: id}
		}
		applied, err := users.Write(ctx, ws)
		if err != nil {
			t.Fatal(err)
		}
		states, err := users.Load(ctx, refs)
		if err != nil {
			t.Fatal(err)
		}
		for i, st := range states {
			if applied[i] == stale(i) {
				t.Fatalf("user %d: applied %v, stale %v", i, applied[i], stale(i))
			}
			slices.Sort(st.Segments)
			want := membership.UserState{Version: -1}
			if !stale(i) {
				want = membership.UserState{Rev: 1, Version: int64(i), Profile: `{"points":1}`, Segments: []string{fmt.Sprintf("seg_%d", i), "seg_a"}}
			}
			if st.Rev != want.Rev || st.Version != want.Version || st.Profile != want.Profile || !slices.Equal(st.Segments, want.Segments) {
				t.Fatalf("user %d stored %+v, want %+v", i, st, want)
			}
		}

		// Then removals for the even users, deletions for the odd ones.
		var next []membership.UserWrite
		var nextRefs []membership.UserRef
		for i, w := range ws {
			if stale(i) {
				continue
			}
			w2 := membership.UserWrite{OrgID: org, UserID: w.UserID, ExpectRev: 1, Version: int64(n + i), Profile: w.Profile, Remove: []string{"seg_a"}}
			if i%2 == 1 {
				// A deletion removes the segments the processor read, and
				// keeps a static segment added since (SADD by the API).
				w2.Profile, w2.Remove = nil, []string{"seg_a", fmt.Sprintf("seg_%d", i)}
				if err := rdb.SAdd(ctx, membership.UserSegmentsKey(org, w.UserID), "seg_static").Err(); err != nil {
					t.Fatal(err)
				}
			}
			next = append(next, w2)
			nextRefs = append(nextRefs, refs[i])
		}
		applied, err = users.Write(ctx, next)
		if err != nil {
			t.Fatal(err)
		}
		states, err = users.Load(ctx, nextRefs)
		if err != nil {
			t.Fatal(err)
		}
		for j, st := range states {
			i := int(next[j].Version) - n
			if !applied[j] || st.Rev != 2 || st.Version != next[j].Version {
				t.Fatalf("user %d: applied %v, stored %+v", i, applied[j], st)
			}
			want := []string{fmt.Sprintf("seg_%d", i)}
			if i%2 == 1 {
				want = []string{"seg_static"}
			}
			if st.Deleted != (i%2 == 1) || !slices.Equal(st.Segments, want) {
				t.Fatalf("user %d: deleted %v, segments %q, want %q", i, st.Deleted, st.Segments, want)
			}
		}
	})
}

// TestHashValueLimit reads the server's hash-max-listpack-value (on a
// cluster, from one of its masters).
func TestHashValueLimit(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		// Every master, so that whichever one the client asks answers.
		each := func(fn func(c redis.UniversalClient) error) {
			t.Helper()
			if err := testenv.EachNode(ctx, rdb, func(_ context.Context, c redis.UniversalClient) error { return fn(c) }); err != nil {
				t.Fatal(err)
			}
		}
		testenv.RealRedisOnly(t, rdb, "CONFIG GET (segmentd only warns from it)")
		const name = "hash-max-listpack-value"
		was, ok := membership.HashValueLimit(ctx, rdb)
		if !ok || was <= 0 {
			t.Fatalf("%s = %d, %v; want the server's setting", name, was, ok)
		}
		t.Cleanup(func() {
			each(func(c redis.UniversalClient) error { return c.ConfigSet(ctx, name, strconv.Itoa(was)).Err() })
		})
		each(func(c redis.UniversalClient) error { return c.ConfigSet(ctx, name, "777").Err() })
		if n, ok := membership.HashValueLimit(ctx, rdb); !ok || n != 777 {
			t.Errorf("%s = %d, %v after setting it to 777", name, n, ok)
		}
	})
}

// TestPing: Redis that can serve answers Ping, standalone or cluster; one
// that cannot (nothing listening, or a server outside any cluster taken
// for one) does not.
func TestPing(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		if err := membership.Ping(context.Background(), rdb); err != nil {
			t.Errorf("ping: %v", err)
		}
	})
	// Each client is made in its subtest: the one that needs a server skips
	// that subtest alone when there is none.
	for name, client := range map[string]func(t *testing.T) redis.UniversalClient{
		"nothing listening": func(*testing.T) redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
		},
		// A node that answers PING, as the masters of a failed cluster do,
		// and whose cluster is not ok (here: it has none).
		"no cluster state ok": func(t *testing.T) redis.UniversalClient {
			addr := testenv.Redis(t)
			return redis.NewClusterClient(&redis.ClusterOptions{MaxRetries: -1,
				ClusterSlots: func(context.Context) ([]redis.ClusterSlot, error) {
					return []redis.ClusterSlot{{Start: 0, End: 16383, Nodes: []redis.ClusterNode{{Addr: addr}}}}, nil
				}})
		},
	} {
		t.Run(name, func(t *testing.T) {
			rdb := client(t)
			defer rdb.Close()
			if err := membership.Ping(context.Background(), rdb); err == nil {
				t.Error("ping answered nil")
			}
		})
	}
	// One node of a cluster, taken for a standalone Redis: it answers
	// PING, and MOVED to most commands.
	t.Run("a cluster node as a standalone Redis", func(t *testing.T) {
		rdb := membership.NewClient(testenv.RedisCluster(t)[:1], membership.Auth{})
		defer rdb.Close()
		if err := membership.Ping(context.Background(), rdb); !errors.Is(err, membership.ErrIsCluster) {
			t.Errorf("ping = %v, want ErrIsCluster", err)
		}
	})
	// Two addresses of standalone servers, taken for a cluster's: a
	// mistake of configuration, which Ping names.
	t.Run("standalone servers as a cluster", func(t *testing.T) {
		testenv.RealServersOnly(t, "miniredis answers CLUSTER SLOTS and refuses CLUSTER INFO")
		addr := testenv.Redis(t)
		rdb := membership.NewClient([]string{addr, addr}, membership.Auth{})
		defer rdb.Close()
		if err := membership.Ping(context.Background(), rdb); !errors.Is(err, membership.ErrNotCluster) {
			t.Errorf("ping = %v, want ErrNotCluster", err)
		}
	})
}

// TestClientAuth: NewClient authenticates as the ACL user it is given, on
// a standalone Redis and on every node of a cluster; a wrong password is
// refused. The user is made on the test servers for the test alone.
func TestClientAuth(t *testing.T) {
	ctx := context.Background()
	for name, addrs := range map[string]func(t *testing.T) []string{
		"standalone": func(t *testing.T) []string { return []string{testenv.Redis(t)} },
		"cluster":    func(t *testing.T) []string { return testenv.RedisCluster(t) },
	} {
		t.Run(name, func(t *testing.T) {
			testenv.RealServersOnly(t, "ACL SETUSER")
			nodes := addrs(t)
			user := testenv.UniqueName(t, "user")
			for _, addr := range nodes {
				admin := redis.NewClient(&redis.Options{Addr: addr})
				if err := admin.Do(ctx, "ACL", "SETUSER", user, "on", ">s3cret pass", "~*", "&*", "+@all").Err(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					admin.Do(context.Background(), "ACL", "DELUSER", user)
					admin.Close()
				})
			}
			for _, tt := range []struct {
				password string
				ok       bool
			}{{"s3cret pass", true}, {"wrong", false}} {
				rdb := membership.NewClient(nodes, membership.Auth{Username: user, Password: tt.password})
				err := membership.Ping(ctx, rdb)
				if err == nil {
					err = rdb.Set(ctx, testenv.UniqueName(t, "k"), "v", time.Minute).Err()
				}
				rdb.Close()
				if (err == nil) != tt.ok {
					t.Errorf("password %q: err = %v, want ok %v", tt.password, err, tt.ok)
				}
				if !tt.ok && !membership.AuthRefused(err) {
					t.Errorf("password %q: AuthRefused(%v) = false, want a refusal of the credentials", tt.password, err)
				}
			}
		})
	}
}

// pipelineSizes records the size of the largest pipeline a client sends.
type pipelineSizes struct{ largest int }

func (p *pipelineSizes) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (p *pipelineSizes) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (p *pipelineSizes) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		p.largest = max(p.largest, len(cmds))
		return next(ctx, cmds)
	}
}

// TestReadsOfManyUsersInBoundedRoundTrips reads the segment sets and the
// states of more users than one round trip should carry: segmentctl
// verify asks for those of every stored user of an organisation at once,
// and a single pipeline of a million users' reads outlasts the client's
// 3 s timeouts (it failed with an i/o timeout, after its retries, on an
// organisation of a million users). Each round trip must stay bounded,
// and the answers must still come back in the order of the users.
func TestReadsOfManyUsersInBoundedRoundTrips(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		testenv.RealRedisOnly(t, rdb, "tens of thousands of keys")
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		const n = 25_000
		ids := make([]string, n)
		pipe := rdb.Pipeline()
		for i := range ids {
			ids[i] = fmt.Sprintf("u%05d", i)
			pipe.SAdd(ctx, membership.UserSegmentsKey(org, ids[i]), fmt.Sprintf("seg_%d", i))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		sizes := &pipelineSizes{}
		rdb.AddHook(sizes)
		users := membership.NewUsers(rdb)
		sets, err := users.UserSegmentSets(ctx, org, ids)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range sets {
			if want := fmt.Sprintf("seg_%d", i); len(s) != 1 || s[0] != want {
				t.Fatalf("user %s: segment set %v, want [%s]", ids[i], s, want)
			}
		}
		views, err := users.ViewUsers(ctx, org, ids, membership.ViewFields{Segment: "seg_7"})
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range views {
			if v.UserID != ids[i] || v.Member != (i == 7) {
				t.Fatalf("view %d: %+v", i, v)
			}
		}
		if sizes.largest > 20_000 {
			t.Fatalf("one round trip carried %d commands for %d users: unbounded", sizes.largest, n)
		}
	})
}
