package membership

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/redis/go-redis/v9"
)

// Each organisation keeps an index of its users, so that a backfill, an
// audience search or verify reads one organisation's users rather than
// scanning every key of every organisation. A user enters the index just
// before its first write (a profile, or the tombstone of a deletion that
// came first), so that every stored user is in it, and stays in it after a
// deletion, as its tombstone stays: readers skip users without a profile.
// The index is split into indexShards sets, so that on Redis Cluster one
// organisation's index spreads over the masters and no one set takes all
// of its writes. Reindex repairs what the stream cannot guarantee (see
// there).
const indexShards = 16

// userIndexKey returns the internal SET of the ids of org's users whose id
// falls in shard.
func userIndexKey(org string, shard int) string {
	return "orgusers:{" + org + ":" + strconv.Itoa(shard) + "}"
}

// indexedKey returns the internal key whose presence says that org's index
// holds every user stored before it: users stored by a build older than
// the index are added by the first read that scans the keyspace for them.
func indexedKey(org string) string { return "orgusers:{" + org + "}:indexed" }

// AllIndexedKey is the internal key whose presence says that every
// organisation's index holds every user stored before it was set (see
// Users.IndexAll): from then on the stream keeps each index whole, so that
// no organisation's first read scans the keyspace for its users.
const AllIndexedKey = "orgusers:all-indexed"

func indexShard(user string) int {
	h := fnv.New32a()
	h.Write([]byte(user))
	return int(h.Sum32() % indexShards)
}

// addToIndex adds users to their organisations' indexes in one pipelined
// round trip and returns how many were not in them yet. SADD is
// idempotent, so a retry changes nothing twice.
func (u *Users) addToIndex(ctx context.Context, refs []UserRef) (int64, error) {
	if len(refs) == 0 {
		return 0, nil
	}
	type shard struct {
		org string
		n   int
	}
	byShard := map[shard][]any{}
	var order []shard
	for _, r := range refs {
		s := shard{r.OrgID, indexShard(r.UserID)}
		if _, ok := byShard[s]; !ok {
			order = append(order, s)
		}
		byShard[s] = append(byShard[s], r.UserID)
	}
	pipe := u.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(order))
	for i, s := range order {
		cmds[i] = pipe.SAdd(ctx, userIndexKey(s.org, s.n), byShard[s]...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("index %d users: %w", len(refs), err)
	}
	var added int64
	for _, c := range cmds {
		added += c.Val()
	}
	return added, nil
}

// indexReaders is how many of an organisation's index sets are read at
// once, so that one page's round trips overlap another's processing.
const indexReaders = 4

// errScanStopped ends the readers of a scan whose consumer has failed.
var errScanStopped = errors.New("scan stopped")

// scanIndex reads every user id of org's index, a page at a time (a user
// may come twice, as with SCAN): read runs on up to indexReaders
// goroutines at once, deliver on one at a time, and not again once it has
// failed. An organisation not yet indexed is indexed first, by scanning
// the keyspace for its profiles (one page at a time): a scan that fails
// half-way leaves the users it added, and the next one scans again.
func scanIndex[T any](ctx context.Context, u *Users, org string, read func(context.Context, []string) (T, error), deliver func(T) error) error {
	indexed, err := u.indexed(ctx, org)
	if err != nil {
		return err
	}
	if !indexed {
		_, err := u.indexKeyspace(ctx, []string{org}, func(ids []string) error {
			v, err := read(ctx, ids)
			if err != nil {
				return err
			}
			return deliver(v)
		})
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // serialises deliver; guards first
		first error      // the first failure, which stops the scan
	)
	page := func(ids []string) error {
		v, err := read(ctx, ids)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case first != nil:
			return errScanStopped
		case err == nil:
			err = deliver(v)
		}
		if err != nil {
			first = err
			cancel()
		}
		return err
	}
	shards := make(chan int)
	for range indexReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for shard := range shards {
				if err := u.scanShard(ctx, userIndexKey(org, shard), page); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					cancel()
				}
			}
		}()
	}
feed:
	for shard := range indexShards {
		select {
		case shards <- shard:
		case <-ctx.Done():
			break feed
		}
	}
	close(shards)
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// indexed reports whether org's index holds every stored user of org:
// because every organisation's does (IndexAll has run), or because a scan
// of the keyspace indexed org's.
func (u *Users) indexed(ctx context.Context, org string) (bool, error) {
	if u.allIndexed.Load() {
		return true, nil
	}
	pipe := u.rdb.Pipeline()
	all := pipe.Exists(ctx, AllIndexedKey)
	one := pipe.Exists(ctx, indexedKey(org))
	if _, err := pipe.Exec(ctx); err != nil {
		return false, fmt.Errorf("user index of %s: %w", org, err)
	}
	if all.Val() == 1 {
		u.allIndexed.Store(true)
		return true, nil
	}
	return one.Val() == 1, nil
}

// scanShard walks one index set with SSCAN. On Redis Cluster the walk is
// pinned to the master holding the set: an SSCAN cursor is a position in one
// server's hash table, whose layout (the server's own hash seed) another
// server does not share, so a cursor that the cluster client followed to the
// set's new master after a resharding (MOVED, ASK) would pass over members
// without an error. A walk that meets a redirection starts again from cursor
// 0 on the set's new master, once the slot has moved: users already given
// come again, as scanIndex allows.
func (u *Users) scanShard(ctx context.Context, key string, fn func(ids []string) error) error {
	cc, ok := u.rdb.(*redis.ClusterClient)
	if !ok {
		return sscanKey(ctx, u.rdb, key, fn)
	}
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(20*time.Millisecond), backoff.WithMaxInterval(time.Second))
	return backoff.Retry(func() error {
		node, err := cc.MasterForKey(ctx, key)
		if err != nil {
			return backoff.Permanent(fmt.Errorf("scan %s: %w", key, err))
		}
		err = sscanKey(ctx, node, key, fn)
		if redirected(err) {
			// The set moved, or is moving: walk it again on its new
			// master once the slot has settled there.
			cc.ReloadState(ctx)
			return err
		}
		if err != nil {
			return backoff.Permanent(err)
		}
		return nil
	}, backoff.WithContext(backoff.WithMaxRetries(bo, maxScanRestarts), ctx))
}

// maxScanRestarts bounds the walks of one index set that a resharding
// restarts (~30 s of waiting for a slot's migration to end); the caller's
// retry takes over after that.
const maxScanRestarts = 35

// redirected reports a cluster node's answer that the key is served
// elsewhere.
func redirected(err error) bool {
	return redis.HasErrorPrefix(err, "MOVED ") || redis.HasErrorPrefix(err, "ASK ")
}

func sscanKey(ctx context.Context, rdb redis.Cmdable, key string, fn func(ids []string) error) error {
	var cursor uint64
	for {
		ids, next, err := rdb.SScan(ctx, key, cursor, "", scanCount).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("scan %s: %w", key, err)
		}
		if len(ids) > 0 {
			if err := fn(ids); err != nil {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// Reindex scans the whole keyspace for the stored users of orgs, adds to
// each organisation's index those it lacks, marks the organisations
// indexed, and returns how many users it added. The stream keeps an index
// whole, but some events can leave a stored user out of it, and every
// later backfill, audience search and verify would then miss that user: a
// failover of Redis that loses an acknowledged index write (the index and
// the profile are on different masters of a cluster), a resharding during
// an organisation's first scan, an instance of a build older than the
// index storing a new user. segmentctl verify calls it first. Nil orgs is
// every organisation with a stored user.
func (u *Users) Reindex(ctx context.Context, orgs []string) (int64, error) {
	if orgs != nil && len(orgs) == 0 {
		return 0, nil
	}
	return u.indexKeyspace(ctx, orgs, nil)
}

// IndexAll adds every stored user of every organisation to its
// organisation's index, in one scan of the keyspace, and then records that
// all are (AllIndexedKey), so that no organisation's first backfill,
// audience search or verify scans the keyspace for its users. It returns
// how many users it added: on a deployment that never ran a build older
// than the index, none. Once recorded it returns at once. Instances may
// run it together (index writes are idempotent); users an older build
// stores afterwards, during a rolling upgrade, are what Reindex repairs.
func (u *Users) IndexAll(ctx context.Context) (int64, error) {
	if u.allIndexed.Load() {
		return 0, nil
	}
	n, err := u.rdb.Exists(ctx, AllIndexedKey).Result()
	if err != nil {
		return 0, fmt.Errorf("user indexes: %w", err)
	}
	if n == 1 {
		u.allIndexed.Store(true)
		return 0, nil
	}
	added, err := u.indexKeyspace(ctx, nil, nil)
	if err != nil {
		return added, err
	}
	if err := u.rdb.Set(ctx, AllIndexedKey, "1", 0).Err(); err != nil {
		return added, fmt.Errorf("mark every organisation indexed: %w", err)
	}
	u.allIndexed.Store(true)
	return added, nil
}

// indexKeyspace scans the keyspace for the stored users of orgs (of every
// organisation when orgs is nil), adds them to their organisations'
// indexes a page at a time, calls fn (when not nil) with each page's user
// ids, and marks the organisations of orgs indexed once the scan is
// complete; users stored meanwhile are indexed by their first write (see
// Users.Write). fn is only for a single organisation.
func (u *Users) indexKeyspace(ctx context.Context, orgs []string, fn func(ids []string) error) (int64, error) {
	match, want := "prof:{*", make(map[string]bool, len(orgs))
	for _, o := range orgs {
		want[o] = true
	}
	if len(orgs) == 1 {
		match = "prof:{" + orgs[0] + ":*"
	}
	var added int64
	met := map[string]bool{} // with orgs nil: the organisations found
	err := u.scanKeys(ctx, match, func(keys []string) error {
		ids := make([]string, 0, len(keys))
		refs := make([]UserRef, 0, len(keys))
		for _, k := range keys {
			if ref, ok := userFromProfileKey(k); ok && (orgs == nil || want[ref.OrgID]) {
				ids = append(ids, ref.UserID)
				refs = append(refs, ref)
				if orgs == nil {
					met[ref.OrgID] = true
				}
			}
		}
		n, err := u.addToIndex(ctx, refs)
		if err != nil {
			return err
		}
		added += n
		if fn == nil {
			return nil
		}
		return fn(ids)
	})
	if err != nil {
		return added, err
	}
	if orgs == nil {
		// Marked too, so that their next reads use the index.
		orgs = slices.Collect(maps.Keys(met))
		if len(orgs) == 0 {
			return added, nil
		}
	}
	pipe := u.rdb.Pipeline()
	for _, o := range orgs {
		pipe.Set(ctx, indexedKey(o), "1", 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return added, fmt.Errorf("mark %d organisations indexed: %w", len(orgs), err)
	}
	return added, nil
}
