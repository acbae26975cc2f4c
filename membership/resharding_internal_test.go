package membership

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
)

// slotMove moves the hash slot of a key to another master by hand, as
// redis-cli --cluster reshard does: open marks the slot IMPORTING on the
// target and MIGRATING on the source, migrate moves its keys, finish gives
// the slot to the target on every master. Its steps return errors rather
// than fail the test, so that a goroutine may run them; the test's cleanup
// finishes a move left open, so that the cluster is whole for the tests
// after it.
type slotMove struct {
	slot         int64
	from, to     *redis.Client
	fromID, toID string
	toAddr       string
	all          []*redis.Client
	finished     bool
}

func newSlotMove(t *testing.T, cc *redis.ClusterClient, key string) *slotMove {
	t.Helper()
	ctx := context.Background()
	slot, err := cc.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	slots, err := cc.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	m := &slotMove{slot: slot}
	ids := map[string]string{}
	var fromAddr string
	for _, s := range slots {
		ids[s.Nodes[0].Addr] = s.Nodes[0].ID
		if int(slot) >= s.Start && int(slot) <= s.End {
			fromAddr = s.Nodes[0].Addr
		}
	}
	for addr, id := range ids {
		c := redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { _ = c.Close() })
		m.all = append(m.all, c)
		switch {
		case addr == fromAddr:
			m.from, m.fromID = c, id
		case m.to == nil:
			m.to, m.toID, m.toAddr = c, id, addr
		}
	}
	if m.from == nil || m.to == nil {
		t.Fatalf("slot %d: no source or no other master in %v", slot, ids)
	}
	t.Cleanup(func() {
		if !m.finished {
			_ = m.finish(context.Background())
		}
	})
	return m
}

func (m *slotMove) open(ctx context.Context) error {
	if err := m.to.Do(ctx, "CLUSTER", "SETSLOT", m.slot, "IMPORTING", m.fromID).Err(); err != nil {
		return err
	}
	return m.from.Do(ctx, "CLUSTER", "SETSLOT", m.slot, "MIGRATING", m.toID).Err()
}

// migrate moves every key of the slot to the target.
func (m *slotMove) migrate(ctx context.Context) error {
	host, port, _ := strings.Cut(m.toAddr, ":")
	for {
		keys, err := m.from.ClusterGetKeysInSlot(ctx, int(m.slot), 100).Result()
		if err != nil || len(keys) == 0 {
			return err
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		if err := m.from.Do(ctx, args...).Err(); err != nil {
			return err
		}
	}
}

// finish migrates what is left and gives the slot to the target, on the
// target and the source first, then on the other masters, and waits until
// every master says so.
func (m *slotMove) finish(ctx context.Context) error {
	m.finished = true
	if err := m.migrate(ctx); err != nil {
		return err
	}
	order := []*redis.Client{m.to, m.from}
	for _, c := range m.all {
		if c != m.to && c != m.from {
			order = append(order, c)
		}
	}
	for _, c := range order {
		if err := c.Do(ctx, "CLUSTER", "SETSLOT", m.slot, "NODE", m.toID).Err(); err != nil {
			return err
		}
	}
	var err error
	ownerMoved := func() bool {
		agreed := true
		for _, c := range m.all {
			var slots []redis.ClusterSlot
			if slots, err = c.ClusterSlots(ctx).Result(); err != nil {
				return true // stop waiting: the error is returned
			}
			for _, s := range slots {
				if int(m.slot) >= s.Start && int(m.slot) <= s.End && s.Nodes[0].ID != m.toID {
					agreed = false
				}
			}
		}
		return agreed
	}
	if !testenv.Eventually(10*time.Second, ownerMoved) {
		return errors.New("the masters do not agree on the slot's new owner")
	}
	return err
}

// TestScanIndexAcrossResharding walks an organisation's user index, as a
// backfill, an audience search and verify do, while the slot of the index
// set being walked moves to another master, or is moving: every stored user
// must still be delivered. An SSCAN cursor is a position in one server's
// hash table; one carried to the set's new master passed over members
// without an error, and a backfill marked its segment ready without them.
func TestScanIndexAcrossResharding(t *testing.T) {
	for _, moving := range []bool{false, true} {
		t.Run(fmt.Sprintf("moving=%v", moving), func(t *testing.T) {
			rdb := testenv.RedisClusterClient(t)
			cc := rdb.(*redis.ClusterClient)
			ctx := context.Background()
			org := testenv.Org(t, rdb, "reshard")
			u := NewUsers(rdb)
			// Users of one index set, enough for several SSCAN pages.
			var refs []UserRef
			for i := 0; len(refs) < 6000; i++ {
				if id := fmt.Sprintf("u%06d", i); indexShard(id) == 0 {
					refs = append(refs, UserRef{OrgID: org, UserID: id})
				}
			}
			if _, err := u.addToIndex(ctx, refs); err != nil {
				t.Fatal(err)
			}
			if err := rdb.Set(ctx, indexedKey(org), "1", 0).Err(); err != nil {
				t.Fatal(err)
			}
			key := userIndexKey(org, 0)
			seen := map[string]bool{}
			pages, started := 0, false
			moved := make(chan error, 1)
			err := u.ScanUserIDs(ctx, org, func(ids []string) error {
				for _, id := range ids {
					seen[id] = true
				}
				if pages++; pages > 1 {
					return nil
				}
				// Between the first page and the second, the set moves.
				m := newSlotMove(t, cc, key)
				if err := m.open(ctx); err != nil {
					return err
				}
				if !moving {
					return m.finish(ctx)
				}
				// On its new master, the slot not handed over yet: ASK,
				// until the move ends a moment later.
				if err := m.migrate(ctx); err != nil {
					return err
				}
				started = true
				go func() {
					time.Sleep(300 * time.Millisecond)
					moved <- m.finish(context.Background())
				}()
				return nil
			})
			if started {
				if merr := <-moved; merr != nil {
					t.Fatalf("slot move: %v", merr)
				}
			}
			if err != nil {
				t.Fatalf("walk: %v", err)
			}
			if len(seen) != len(refs) {
				t.Fatalf("the walk delivered %d of the %d indexed users (%d pages): %d missed", len(seen), len(refs), pages, len(refs)-len(seen))
			}
		})
	}
}
