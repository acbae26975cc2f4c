package membership

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/segment"
)

// Errors of the definition store. They are returned wrapped; test them with
// errors.Is.
var (
	// ErrNotFound reports a segment that does not exist in the organisation.
	ErrNotFound = errors.New("segment not found")
	// ErrLimitExceeded reports an organisation that already has
	// segment.MaxSegmentsPerOrg segments.
	ErrLimitExceeded = errors.New("segment limit exceeded")
	// ErrInvalidCursor reports a paging cursor that this store did not issue.
	ErrInvalidCursor = errors.New("invalid cursor")
	// ErrUnchanged is returned by the function given to Definitions.Update
	// to leave the definition as it is.
	ErrUnchanged = errors.New("definition unchanged")
)

// Internal keys of the definition store.
//
//   - segdefs:{<org>}: HASH segment id → JSON of the definition (one
//     organisation's definitions in one hash slot, so that the per-organisation
//     limit is checked and written by one script).
//   - segdefs:orgs: SET of the organisations that have (or had) definitions.
//   - segdefs:rev: counter incremented after every change that evaluation
//     can see; instances poll it to reload.
//   - segdefs:changes:{segdefs:rev}: ZSET organisation → the revision of its
//     latest change, so that an instance reloads only the organisations
//     that changed. Its hash tag is the counter's whole name, which puts
//     both keys in one Redis Cluster slot: one script moves both.
const (
	definitionOrgsKey    = "segdefs:orgs"
	definitionRevKey     = "segdefs:rev"
	definitionChangesKey = "segdefs:changes:{segdefs:rev}"
)

// bumpScript moves the revision and records which organisation it moved
// for, atomically: a reader that sees a revision also sees every
// organisation changed up to it.
var bumpScript = redis.NewScript(`
local r = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], r, ARGV[1])
return r
`)

// DefinitionsKey returns the internal hash holding an organisation's segment
// definitions.
func DefinitionsKey(org string) string { return "segdefs:{" + org + "}" }

// maxUpdateAttempts bounds the compare-and-set retries of Update.
const maxUpdateAttempts = 16

// DefaultListLimit is the page size of Definitions.List when none is given.
const DefaultListLimit = 50

// Definitions stores segment definitions in Redis, shared by every instance
// and kept across restarts. It works on standalone Redis and on Redis Cluster:
// each script touches only one organisation's hash. It is safe for concurrent
// use.
//
// The list of a static segment is not stored with its definition: it is the
// segment's membership set (see SegmentMembersKey), so definitions returned
// by this store have no UserIDs.
type Definitions struct {
	rdb    redis.UniversalClient
	create *redis.Script
	cas    *redis.Script
	put    *redis.Script
	now    func() time.Time
}

// NewDefinitions returns a definition store on rdb (standalone or cluster).
func NewDefinitions(rdb redis.UniversalClient) *Definitions {
	return &Definitions{
		rdb:    rdb,
		create: redis.NewScript(createDefinitionScript),
		cas:    redis.NewScript(casDefinitionScript),
		put:    redis.NewScript(putDefinitionScript),
		now:    time.Now,
	}
}

// createDefinitionScript adds a definition unless the id is taken (-1) or the
// organisation is at its limit (0). With a second key (an idempotency
// record, ARGV 4 and 5 its value and lifetime in seconds) it first returns
// the record when one exists, and writes it with the definition otherwise.
// Both keys carry the organisation's hash tag.
//
// The Redis client sends the script again when its reply is lost: that
// resend finds the record or the definition it wrote itself (the same
// bytes: a new id, and the record naming it) and answers 1 as the first
// run did, rather than take its own create for another's.
const createDefinitionScript = `
if #KEYS > 1 then
  local prior = redis.call('GET', KEYS[2])
  if prior == ARGV[4] then return 1 end
  if prior then return prior end
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur == ARGV[2] then return 1 end
if cur then return -1 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if #KEYS > 1 then redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5]) end
return 1
`

// casDefinitionScript replaces a definition only while it still holds the
// JSON it was read as: 1 done, 0 changed meanwhile, -1 gone. A resend after
// a lost reply finds the JSON it wrote itself (its write identifier is
// the update's own) and answers 1 as the first run did, instead of sending
// the caller to apply its change again; only when another writer wrote in
// between does the resend answer 0, and the change is then made again on
// top of that write.
const casDefinitionScript = `
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return -1 end
if cur == ARGV[3] then return 1 end
if cur ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
`

// putDefinitionScript replaces an existing definition: 1 done, 0 gone.
const putDefinitionScript = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
`

// segmentIDs remembers the last id made, so that ids made by this process
// rise strictly even within one millisecond or when the clock steps back.
var segmentIDs struct {
	// Mutex guards ms and rand.
	sync.Mutex
	ms   uint64
	rand uint64
}

// NewSegmentID returns a new segment id: "seg_", 12 hex digits of the unix
// milliseconds of now and 10 random hex digits, so that ids sort in creation
// order. Ids made by one process rise strictly: within one millisecond (or
// when the clock steps back) the last id's random part is incremented.
func NewSegmentID(now time.Time) string {
	const randBits = 40
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	r := binary.BigEndian.Uint64(b[:]) >> (64 - randBits)
	ms := uint64(max(now.UnixMilli(), 0)) & (1<<48 - 1)

	segmentIDs.Lock()
	if ms <= segmentIDs.ms {
		ms, r = segmentIDs.ms, segmentIDs.rand+1
		if r >= 1<<randBits {
			ms, r = ms+1, 0
		}
	}
	segmentIDs.ms, segmentIDs.rand = ms, r
	segmentIDs.Unlock()
	return fmt.Sprintf("seg_%012x%010x", ms, r)
}

// Create stores a new definition and returns it as stored. An empty d.ID is
// replaced by a new id, a zero Generation by 1, zero CreatedAt and UpdatedAt
// by the current time. It fails with ErrLimitExceeded when the organisation
// already has segment.MaxSegmentsPerOrg segments, counted and written
// atomically.
func (s *Definitions) Create(ctx context.Context, d segment.Definition) (segment.Definition, error) {
	out, err := s.insert(ctx, d, nil)
	return out.Definition, err
}

// IdempotencyTTL is how long a create's idempotency key is remembered.
const IdempotencyTTL = 24 * time.Hour

// Errors of idempotent creates.
var (
	// ErrIdempotencyKeyReused reports an idempotency key that created a
	// segment from a different request.
	ErrIdempotencyKeyReused = errors.New("idempotency key already used with a different request")
	// ErrCreateInProgress reports an idempotency key whose create is still
	// pending under another request's lease.
	ErrCreateInProgress = errors.New("a create with this idempotency key is in progress")
	// errClaimLost reports a claim whose record changed: its lease ran
	// out and another request took the create over, or it was forgotten.
	errClaimLost = errors.New("the create's claim was taken over")
)

// IdempotentCreate names a create by its client's idempotency key.
type IdempotentCreate struct {
	// Key is the client's key, any string; it is stored hashed.
	Key string
	// Fingerprint identifies the request's content: a retry with the
	// same key must bring the same fingerprint.
	Fingerprint string
	// Pending says the create has a part left once the definition is
	// stored (a static segment's list): the request gets a Claim, and the
	// record stays pending until FinishCreate.
	Pending bool
	// Lease is how long a request has to finish a pending create: a retry
	// before it runs out gets ErrCreateInProgress, one after it takes the
	// create over. It must outlast the request, rollback included.
	Lease time.Duration
}

// Claim is a pending create that its holder must finish (FinishCreate) or,
// having rolled it back, forget (ForgetCreate).
type Claim struct {
	org, key, record string
}

// CreateOutcome is the outcome of CreateIdempotent.
type CreateOutcome struct {
	// Definition is the segment as created, or as it is now for a replay.
	Definition segment.Definition
	// Replayed reports that an earlier request with the key created the
	// segment: nothing was created now.
	Replayed bool
	// Claim, when not nil, is a pending create this request holds: a new
	// one, or one taken over from a request whose lease ran out while the
	// segment's list had not changed since.
	Claim *Claim
}

// CreateIdempotent is Create for a request that carries an idempotency key.
// The first request with the key creates the segment and records the key for
// IdempotencyTTL, in the same script. A later one with the same fingerprint
// creates nothing and gets the segment that the key created, as it is now
// (ErrNotFound when it has been deleted since, ErrCreateInProgress while it
// is pending under a live lease); one with another fingerprint gets
// ErrIdempotencyKeyReused.
func (s *Definitions) CreateIdempotent(ctx context.Context, d segment.Definition, ic IdempotentCreate) (CreateOutcome, error) {
	return s.insert(ctx, d, &ic)
}

// FinishCreate records that the pending create of c is complete. It fails
// when the claim was lost (its lease ran out and a retry took over), unless
// that retry has finished the create already: the record then says what
// this call would write.
func (s *Definitions) FinishCreate(ctx context.Context, c *Claim) error {
	r, err := parseRecord(c.record)
	if err != nil {
		return err
	}
	r.state, r.until = "d", 0
	return s.swapRecord(ctx, c, r.String())
}

// ForgetCreate removes the record of the pending create of c, which its
// holder rolled back, so that a retry with the key creates the segment
// again. A record that another request has taken over stays.
func (s *Definitions) ForgetCreate(ctx context.Context, c *Claim) error {
	return s.swapRecord(ctx, c, "")
}

// swapRecordScript replaces KEYS[1] by ARGV[2] (deletes it when empty),
// keeping its lifetime, while it holds ARGV[1]: 1 done, 0 not. A resend
// after a lost reply finds its own outcome and answers 1 again.
var swapRecordScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then
  if cur == ARGV[2] or (ARGV[2] == '' and not cur) then return 1 end
  return 0
end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') end
return 1
`)

// swapRecord replaces the record of c by next ("" deletes it) while it is
// still c's, and makes next c's record.
func (s *Definitions) swapRecord(ctx context.Context, c *Claim, next string) error {
	n, err := swapRecordScript.Run(ctx, s.rdb, []string{idempotencyKey(c.org, c.key)}, c.record, next).Int64()
	if err != nil {
		return fmt.Errorf("idempotency record in %s: %w", c.org, err)
	}
	if n == 0 {
		return fmt.Errorf("idempotency record in %s: %w", c.org, errClaimLost)
	}
	c.record = next
	return nil
}

// idempotencyKey is the internal key of a create's idempotency record, in
// the organisation's hash slot (beside its definitions, so that one script
// writes both). The client's key is hashed: any length, any bytes.
func idempotencyKey(org, key string) string {
	sum := sha256.Sum256([]byte(key))
	return "segidem:{" + org + "}:" + hex.EncodeToString(sum[:16])
}

// idemRecord is an idempotency record: state "p" (pending) or "d" (done),
// the request's fingerprint, the segment it created, the segment's
// generation then, and the pending lease's end (unix ms).
type idemRecord struct {
	state, fingerprint, id string
	generation, until      int64
}

// String is the stored form: the fields separated by spaces.
func (r idemRecord) String() string {
	return fmt.Sprintf("%s %s %s %d %d", r.state, r.fingerprint, r.id, r.generation, r.until)
}

func parseRecord(rec string) (idemRecord, error) {
	f := strings.Fields(rec)
	if len(f) != 5 || (f[0] != "p" && f[0] != "d") {
		return idemRecord{}, fmt.Errorf("unreadable idempotency record %q", rec)
	}
	r := idemRecord{state: f[0], fingerprint: f[1], id: f[2]}
	var err1, err2 error
	r.generation, err1 = strconv.ParseInt(f[3], 10, 64)
	r.until, err2 = strconv.ParseInt(f[4], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return idemRecord{}, fmt.Errorf("unreadable idempotency record %q: %w", rec, err)
	}
	return r, nil
}

// replay answers a create whose key has the record rec.
func (s *Definitions) replay(ctx context.Context, org string, ic IdempotentCreate, rec string) (CreateOutcome, error) {
	r, err := parseRecord(rec)
	if err != nil {
		return CreateOutcome{}, fmt.Errorf("create in %s: %w", org, err)
	}
	if r.fingerprint != ic.Fingerprint {
		return CreateOutcome{}, fmt.Errorf("create in %s: %w (it created segment %s)", org, ErrIdempotencyKeyReused, r.id)
	}
	// A crash may have come between the earlier create and its bump: bump
	// again, so that every instance sees the segment.
	if err := s.bump(ctx, org); err != nil {
		return CreateOutcome{}, fmt.Errorf("create %s/%s: %w", org, r.id, err)
	}
	d, err := s.Get(ctx, org, r.id)
	if err == nil && d.Status == segment.StatusDeleting {
		err = fmt.Errorf("get segment %s/%s: %w", org, r.id, ErrNotFound)
	}
	if err != nil {
		return CreateOutcome{}, fmt.Errorf("replay of the create of segment %s: %w", r.id, err)
	}
	out := CreateOutcome{Definition: d, Replayed: true}
	if r.state == "d" {
		return out, nil
	}
	now := s.now()
	if now.UnixMilli() < r.until {
		return CreateOutcome{}, fmt.Errorf("create of segment %s/%s: %w", org, r.id, ErrCreateInProgress)
	}
	// The request that held the create is gone. A list written since (the
	// create's own, whole, or a later change: either moves the list's
	// version, in the transaction of its last write) leaves nothing to do;
	// otherwise this request takes over.
	written, err := s.rdb.Exists(ctx, ListVersionKey(org, r.id)).Result()
	if err != nil {
		return CreateOutcome{}, fmt.Errorf("replay of the create of segment %s: %w", r.id, err)
	}
	c := &Claim{org: org, key: ic.Key, record: rec}
	next := r
	if written != 0 || d.Generation != r.generation {
		next.state, next.until = "d", 0
	} else {
		next.until = now.Add(ic.Lease).UnixMilli()
	}
	if err := s.swapRecord(ctx, c, next.String()); errors.Is(err, errClaimLost) {
		// Another retry took it over (or finished it) just now.
		return CreateOutcome{}, fmt.Errorf("create of segment %s/%s: %w", org, r.id, ErrCreateInProgress)
	} else if err != nil {
		return CreateOutcome{}, err
	}
	if next.state == "p" {
		out.Claim = c
	}
	return out, nil
}

func (s *Definitions) insert(ctx context.Context, d segment.Definition, ic *IdempotentCreate) (CreateOutcome, error) {
	now := s.now().UTC()
	if d.Generation == 0 {
		d.Generation = 1
	}
	if d.CreatedAt.IsZero() {
		d.CreatedAt = now
	}
	if d.UpdatedAt.IsZero() {
		d.UpdatedAt = d.CreatedAt
	}
	fixedID := d.ID != ""
	// The organisation is listed first, so that All never misses a stored
	// definition; listing it is idempotent.
	if err := s.rdb.SAdd(ctx, definitionOrgsKey, d.OrgID).Err(); err != nil {
		return CreateOutcome{}, fmt.Errorf("create segment: list organisation %s: %w", d.OrgID, err)
	}
	keys := []string{DefinitionsKey(d.OrgID)}
	if ic != nil {
		keys = append(keys, idempotencyKey(d.OrgID, ic.Key))
	}
	for attempt := 0; ; attempt++ {
		if !fixedID {
			d.ID = NewSegmentID(now)
		}
		raw, err := encodeDefinition(d)
		if err != nil {
			return CreateOutcome{}, fmt.Errorf("create segment: %w", err)
		}
		args := []any{d.ID, raw, segment.MaxSegmentsPerOrg}
		var rec idemRecord
		if ic != nil {
			rec = idemRecord{state: "d", fingerprint: ic.Fingerprint, id: d.ID, generation: d.Generation}
			if ic.Pending {
				rec.state, rec.until = "p", now.Add(ic.Lease).UnixMilli()
			}
			args = append(args, rec.String(), int64(IdempotencyTTL/time.Second))
		}
		res, err := s.create.Run(ctx, s.rdb, keys, args...).Result()
		if err != nil {
			return CreateOutcome{}, fmt.Errorf("create segment %s/%s: %w", d.OrgID, d.ID, err)
		}
		if rec, ok := res.(string); ok {
			return s.replay(ctx, d.OrgID, *ic, rec)
		}
		switch n, _ := res.(int64); {
		case n == 0:
			return CreateOutcome{}, fmt.Errorf("create segment in %s: %w (at most %d)", d.OrgID, ErrLimitExceeded, segment.MaxSegmentsPerOrg)
		case n == -1 && (fixedID || attempt >= 3):
			return CreateOutcome{}, fmt.Errorf("create segment %s/%s: id already taken", d.OrgID, d.ID)
		case n == -1:
			continue
		case n != 1:
			return CreateOutcome{}, fmt.Errorf("create segment %s/%s: unexpected reply %v", d.OrgID, d.ID, res)
		}
		if err := s.bump(ctx, d.OrgID); err != nil {
			return CreateOutcome{}, fmt.Errorf("create segment %s/%s: %w", d.OrgID, d.ID, err)
		}
		d.UserIDs = nil
		out := CreateOutcome{Definition: d}
		if rec.state == "p" {
			out.Claim = &Claim{org: d.OrgID, key: ic.Key, record: rec.String()}
		}
		return out, nil
	}
}

// Get returns one definition, or ErrNotFound. It also returns definitions
// whose deletion has begun (status segment.StatusDeleting).
func (s *Definitions) Get(ctx context.Context, org, id string) (segment.Definition, error) {
	d, _, err := s.get(ctx, org, id)
	return d, err
}

func (s *Definitions) get(ctx context.Context, org, id string) (segment.Definition, string, error) {
	raw, err := s.rdb.HGet(ctx, DefinitionsKey(org), id).Result()
	if errors.Is(err, redis.Nil) {
		return segment.Definition{}, "", fmt.Errorf("get segment %s/%s: %w", org, id, ErrNotFound)
	}
	if err != nil {
		return segment.Definition{}, "", fmt.Errorf("get segment %s/%s: %w", org, id, err)
	}
	d, err := decodeDefinition(raw)
	if err != nil {
		return segment.Definition{}, "", fmt.Errorf("get segment %s/%s: %w", org, id, err)
	}
	return d, raw, nil
}

// GetMany returns the definitions of ids that exist in the organisation, by
// id, in one round trip; ids that do not exist are left out.
func (s *Definitions) GetMany(ctx context.Context, org string, ids []string) (map[string]segment.Definition, error) {
	out := make(map[string]segment.Definition, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	vals, err := s.rdb.HMGet(ctx, DefinitionsKey(org), ids...).Result()
	if err != nil {
		return nil, fmt.Errorf("get %d segments of %s: %w", len(ids), org, err)
	}
	for i, v := range vals {
		raw, ok := v.(string)
		if !ok {
			continue
		}
		d, err := decodeDefinition(raw)
		if err != nil {
			return nil, fmt.Errorf("get segment %s/%s: %w", org, ids[i], err)
		}
		out[ids[i]] = d
	}
	return out, nil
}

// ListOptions select a page of Definitions.List.
type ListOptions struct {
	// Limit is the page size; zero or less means DefaultListLimit.
	Limit int
	// Type keeps only segments of this type; empty keeps every type.
	Type segment.Type
	// Cursor is the NextCursor of the previous page; empty starts at the
	// beginning.
	Cursor string
}

// List returns one organisation's definitions in creation order (the order of
// their ids), a page at a time, with the cursor of the next page ("" after
// the last page). Segments being deleted are left out. A cursor this store
// did not issue fails with ErrInvalidCursor.
func (s *Definitions) List(ctx context.Context, org string, opts ListOptions) ([]segment.Definition, string, error) {
	limit := opts.Limit
	if limit <= 0 {
		limit = DefaultListLimit
	}
	after := ""
	if opts.Cursor != "" {
		b, err := base64.RawURLEncoding.DecodeString(opts.Cursor)
		if err != nil || !strings.HasPrefix(string(b), "seg_") {
			return nil, "", fmt.Errorf("list segments: %w", ErrInvalidCursor)
		}
		after = string(b)
	}
	key := DefinitionsKey(org)
	ids, err := s.rdb.HKeys(ctx, key).Result()
	if err != nil {
		return nil, "", fmt.Errorf("list segments of %s: %w", org, err)
	}
	slices.Sort(ids)
	start, _ := slices.BinarySearch(ids, after)
	if start < len(ids) && ids[start] == after {
		start++
	}
	ids = ids[start:]

	// Read in batches until one more match than the page holds is found, so
	// that the next cursor is given only when there is a next page.
	out := make([]segment.Definition, 0, limit)
	batch := max(2*(limit+1), 32)
	for len(ids) > 0 {
		n := min(batch, len(ids))
		vals, err := s.rdb.HMGet(ctx, key, ids[:n]...).Result()
		if err != nil {
			return nil, "", fmt.Errorf("list segments of %s: %w", org, err)
		}
		for i, v := range vals {
			raw, ok := v.(string)
			if !ok {
				continue // deleted since HKEYS
			}
			// The type and status first: a definition the page leaves out
			// costs a scan of its JSON, not the decoding of its criteria
			// (up to segment.MaxCriteriaBytes each, in an organisation of
			// segment.MaxSegmentsPerOrg). JSON that does not read here
			// does not decode below either, and is reported there.
			var head struct {
				Type   string `json:"type"`
				Status string `json:"status"`
			}
			if json.Unmarshal([]byte(raw), &head) == nil &&
				(head.Status == string(segment.StatusDeleting) || (opts.Type != "" && head.Type != string(opts.Type))) {
				continue
			}
			d, err := decodeDefinition(raw)
			if err != nil {
				return nil, "", fmt.Errorf("list segments of %s: %s: %w", org, ids[i], err)
			}
			if len(out) == limit {
				return out, base64.RawURLEncoding.EncodeToString([]byte(out[limit-1].ID)), nil
			}
			out = append(out, d)
		}
		ids = ids[n:]
	}
	return out, "", nil
}

// Replace overwrites an existing definition (matched by d.OrgID and d.ID)
// with d as given, and returns ErrNotFound when it does not exist. Prefer
// Update, which cannot lose a concurrent change.
func (s *Definitions) Replace(ctx context.Context, d segment.Definition) error {
	raw, err := encodeDefinition(d)
	if err != nil {
		return fmt.Errorf("replace segment %s/%s: %w", d.OrgID, d.ID, err)
	}
	res, err := s.put.Run(ctx, s.rdb, []string{DefinitionsKey(d.OrgID)}, d.ID, raw).Int64()
	if err != nil {
		return fmt.Errorf("replace segment %s/%s: %w", d.OrgID, d.ID, err)
	}
	if res == 0 {
		return fmt.Errorf("replace segment %s/%s: %w", d.OrgID, d.ID, ErrNotFound)
	}
	if err := s.bump(ctx, d.OrgID); err != nil {
		return fmt.Errorf("replace segment %s/%s: %w", d.OrgID, d.ID, err)
	}
	return nil
}

// Update reads a definition, lets fn change it and writes it back only if
// nobody changed it meanwhile, retrying otherwise; fn may thus run more than
// once and must depend only on its argument. fn must not change the id or
// the organisation. When fn returns ErrUnchanged nothing is written and
// Update returns the definition as read; any other error of fn is returned
// wrapped. Update returns the definition as written, or ErrNotFound.
func (s *Definitions) Update(ctx context.Context, org, id string, fn func(*segment.Definition) error) (segment.Definition, error) {
	return s.update(ctx, org, id, true, fn)
}

func (s *Definitions) update(ctx context.Context, org, id string, bump bool, fn func(*segment.Definition) error) (segment.Definition, error) {
	var out segment.Definition
	// A compare-and-set that lost to another writer reads again after a
	// short, jittered pause, so that writers racing on one segment spread
	// out instead of colliding again at once.
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = time.Millisecond, 50*time.Millisecond
	attempt := func() error {
		cur, raw, err := s.get(ctx, org, id)
		if err != nil {
			return backoff.Permanent(fmt.Errorf("update segment: %w", err))
		}
		next := cur
		next.Criteria = segment.Criteria{
			Include: slices.Clone(cur.Criteria.Include),
			Exclude: slices.Clone(cur.Criteria.Exclude),
		}
		// A change found already made may be one whose bump failed (the
		// caller retries after an error): bumping again makes sure every
		// instance loads it. A bump is idempotent in effect.
		unchanged := func() error {
			out = cur
			if bump {
				if err := s.bump(ctx, org); err != nil {
					return backoff.Permanent(fmt.Errorf("update segment %s/%s: %w", org, id, err))
				}
			}
			return nil
		}
		if err := fn(&next); errors.Is(err, ErrUnchanged) {
			return unchanged()
		} else if err != nil {
			return backoff.Permanent(fmt.Errorf("update segment %s/%s: %w", org, id, err))
		}
		next.ID, next.OrgID = cur.ID, cur.OrgID
		enc, err := encodeStored(next, storedWriteID(raw))
		if err != nil {
			return backoff.Permanent(fmt.Errorf("update segment %s/%s: %w", org, id, err))
		}
		if enc == raw {
			return unchanged()
		}
		// A write of its own, so that a resend of the compare-and-set
		// can tell its own write from another writer's of the same content.
		if enc, err = encodeStored(next, newWriteID()); err != nil {
			return backoff.Permanent(fmt.Errorf("update segment %s/%s: %w", org, id, err))
		}
		res, err := s.cas.Run(ctx, s.rdb, []string{DefinitionsKey(org)}, id, raw, enc).Int64()
		if err != nil {
			return backoff.Permanent(fmt.Errorf("update segment %s/%s: %w", org, id, err))
		}
		switch res {
		case -1:
			return backoff.Permanent(fmt.Errorf("update segment %s/%s: %w", org, id, ErrNotFound))
		case 0:
			return errChangedMeanwhile
		}
		if bump {
			if err := s.bump(ctx, org); err != nil {
				return backoff.Permanent(fmt.Errorf("update segment %s/%s: %w", org, id, err))
			}
		}
		next.UserIDs = nil
		out = next
		return nil
	}
	err := backoff.Retry(attempt, backoff.WithContext(backoff.WithMaxRetries(bo, maxUpdateAttempts-1), ctx))
	if errors.Is(err, errChangedMeanwhile) {
		return segment.Definition{}, fmt.Errorf("update segment %s/%s: changed concurrently %d times, giving up: %w", org, id, maxUpdateAttempts, ErrContended)
	}
	if err != nil {
		return segment.Definition{}, err
	}
	return out, nil
}

// ErrContended reports an update that lost its compare-and-set to other
// writers of the same segment every time it tried: nothing was written,
// and it may be made again.
var ErrContended = errors.New("segment contended")

// errChangedMeanwhile is a compare-and-set that lost to another writer.
var errChangedMeanwhile = errors.New("segment changed meanwhile")

// Delete removes a definition, or returns ErrNotFound. It does not touch the
// segment's membership.
func (s *Definitions) Delete(ctx context.Context, org, id string) error {
	n, err := s.rdb.HDel(ctx, DefinitionsKey(org), id).Result()
	if err != nil {
		return fmt.Errorf("delete segment %s/%s: %w", org, id, err)
	}
	if n == 0 {
		return fmt.Errorf("delete segment %s/%s: %w", org, id, ErrNotFound)
	}
	if err := s.bump(ctx, org); err != nil {
		return fmt.Errorf("delete segment %s/%s: %w", org, id, err)
	}
	return nil
}

// MarkReady sets a segment's status to ready, but only while its generation
// is still generation: a backfill computed for older criteria leaves a
// segment whose criteria changed meanwhile building. A segment being deleted
// stays so.
func (s *Definitions) MarkReady(ctx context.Context, org, id string, generation int64) error {
	_, err := s.update(ctx, org, id, true, func(d *segment.Definition) error {
		if d.Generation != generation || d.Status != segment.StatusBuilding {
			return ErrUnchanged
		}
		d.Status = segment.StatusReady
		d.BackfillScanned = 0
		d.BackfillStarted = 0
		d.BackfillEarlier = nil
		return nil
	})
	return err
}

// MarkDeleting sets a segment's status to segment.StatusDeleting, which
// hides it from List and All while its membership is removed, and returns
// the definition.
func (s *Definitions) MarkDeleting(ctx context.Context, org, id string) (segment.Definition, error) {
	return s.update(ctx, org, id, true, func(d *segment.Definition) error {
		if d.Status == segment.StatusDeleting {
			return ErrUnchanged
		}
		// Hidden from the API from now on, UpdatedAt says since when it is
		// being deleted (see processor.Jobs, which finishes deletions that
		// their request left undone).
		d.Status, d.UpdatedAt = segment.StatusDeleting, time.Now().UTC()
		return nil
	})
}

// BeginBackfill records that a backfill of generation is about to write and
// reports whether it is the first to: false when an earlier attempt may have
// written (it then has outbox entries to find) or the generation is no longer
// the segment's. Every attempt also learns the older generations, oldest
// first, whose backfills began and did not end cleanly before this
// generation's first attempt (see segment.Definition.BackfillEarlier):
// their changes may be in outboxes, unpublished. Like the progress, it does
// not move the revision.
func (s *Definitions) BeginBackfill(ctx context.Context, org, id string, generation int64) (first bool, unfinished []int64, err error) {
	_, err = s.update(ctx, org, id, false, func(d *segment.Definition) error {
		first, unfinished = false, nil
		switch {
		case d.Generation != generation:
			return ErrUnchanged
		case d.BackfillStarted == generation:
			unfinished = d.BackfillEarlier
			return ErrUnchanged
		}
		// The generation that began last did not end cleanly, nor did the
		// ones it was looking for: this one looks for them all.
		if d.BackfillStarted != 0 {
			d.BackfillEarlier = append(d.BackfillEarlier, d.BackfillStarted)
		}
		if n := len(d.BackfillEarlier); n > segment.MaxUnfinishedBackfills {
			d.BackfillEarlier = d.BackfillEarlier[n-segment.MaxUnfinishedBackfills:]
		}
		first, unfinished = true, d.BackfillEarlier
		d.BackfillStarted = generation
		return nil
	})
	if err != nil {
		return false, nil, err
	}
	return first, unfinished, nil
}

// EndBackfill records that the backfill of generation, stopped by a change
// of the segment, published everything it wrote. The older generations it
// was looking for stay recorded: it stopped partway, so some of their
// entries may be unpublished still, and the next generation looks for them.
func (s *Definitions) EndBackfill(ctx context.Context, org, id string, generation int64) error {
	_, err := s.update(ctx, org, id, false, func(d *segment.Definition) error {
		if d.BackfillStarted != generation {
			return ErrUnchanged
		}
		d.BackfillStarted = 0
		return nil
	})
	return err
}

// SetBackfillProgress records how many users the backfill of generation
// has scanned, while the segment builds that generation. Like the
// estimate, it does not move the revision.
func (s *Definitions) SetBackfillProgress(ctx context.Context, org, id string, generation, scanned int64) error {
	_, err := s.update(ctx, org, id, false, func(d *segment.Definition) error {
		if d.Generation != generation || d.Status != segment.StatusBuilding || d.BackfillScanned == scanned {
			return ErrUnchanged
		}
		d.BackfillScanned = scanned
		return nil
	})
	return err
}

// SetEstimatedSize records a segment's estimated size, read from its member
// set at generation, while the segment is still at that generation and not
// building: a size read as a rebuild began would be part of one. It does
// not move the revision, since evaluation does not read the estimate.
func (s *Definitions) SetEstimatedSize(ctx context.Context, org, id string, generation, n int64) error {
	_, err := s.update(ctx, org, id, false, func(d *segment.Definition) error {
		if d.Generation != generation || d.Status == segment.StatusBuilding || d.EstimatedSize == n {
			return ErrUnchanged
		}
		d.EstimatedSize = n
		return nil
	})
	return err
}

// Revision returns the definitions' revision, which moves after every change
// that evaluation can see; 0 before the first.
func (s *Definitions) Revision(ctx context.Context) (int64, error) {
	n, err := s.rdb.Get(ctx, definitionRevKey).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("definitions revision: %w", err)
	}
	return n, nil
}

// bump moves the revision for a change of org's definitions.
func (s *Definitions) bump(ctx context.Context, org string) error {
	_, err := s.MoveRevision(ctx, org)
	return err
}

// MoveRevision moves the revision as a change of org's definitions does,
// without changing any, and returns the revision it moved to. Every
// instance loads org's definitions again at that revision, so that a
// caller which waits for it (a backfill) knows every definition stored
// before the call in force everywhere, whether or not its writer has moved
// the revision yet.
func (s *Definitions) MoveRevision(ctx context.Context, org string) (int64, error) {
	n, err := bumpScript.Run(ctx, s.rdb, []string{definitionRevKey, definitionChangesKey}, org).Int64()
	if err != nil {
		return 0, fmt.Errorf("bump definitions revision: %w", err)
	}
	return n, nil
}

// ChangedOrgs returns the organisations whose definitions changed at a
// revision after since, sorted. An organisation changed again since the
// revision a caller read is listed too.
func (s *Definitions) ChangedOrgs(ctx context.Context, since int64) ([]string, error) {
	orgs, err := s.rdb.ZRangeByScore(ctx, definitionChangesKey, &redis.ZRangeBy{Min: fmt.Sprintf("(%d", since), Max: "+inf"}).Result()
	if err != nil {
		return nil, fmt.Errorf("organisations changed since revision %d: %w", since, err)
	}
	slices.Sort(orgs)
	return orgs, nil
}

// OrgDefinitions returns the definitions of one organisation, sorted by id,
// leaving out segments being deleted.
func (s *Definitions) OrgDefinitions(ctx context.Context, org string) ([]segment.Definition, error) {
	raw, err := s.rdb.HGetAll(ctx, DefinitionsKey(org)).Result()
	if err != nil {
		return nil, fmt.Errorf("definitions of %s: %w", org, err)
	}
	defs, err := decodeOrgDefinitions(nil, org, raw, inForce)
	if err != nil {
		return nil, fmt.Errorf("definitions of %s: %w", org, err)
	}
	return defs, nil
}

// inForce keeps the definitions not being deleted; beingDeleted the others.
func inForce(d segment.Definition) bool      { return d.Status != segment.StatusDeleting }
func beingDeleted(d segment.Definition) bool { return d.Status == segment.StatusDeleting }

// decodeOrgDefinitions appends to out the stored definitions of one
// organisation that keep accepts, sorted by id.
func decodeOrgDefinitions(out []segment.Definition, org string, raw map[string]string, keep func(segment.Definition) bool) ([]segment.Definition, error) {
	start := len(out)
	for id, r := range raw {
		d, err := decodeDefinition(r)
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", org, id, err)
		}
		if keep(d) {
			out = append(out, d)
		}
	}
	slices.SortFunc(out[start:], func(a, b segment.Definition) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Orgs returns the organisations that have or had definitions, sorted.
func (s *Definitions) Orgs(ctx context.Context) ([]string, error) {
	orgs, err := s.rdb.SMembers(ctx, definitionOrgsKey).Result()
	if err != nil {
		return nil, fmt.Errorf("list organisations: %w", err)
	}
	slices.Sort(orgs)
	return orgs, nil
}

// All returns the definitions of every organisation, sorted by organisation
// and id, leaving out segments being deleted.
func (s *Definitions) All(ctx context.Context) ([]segment.Definition, error) {
	defs, err := s.every(ctx, inForce)
	if err != nil {
		return nil, fmt.Errorf("all definitions: %w", err)
	}
	return defs, nil
}

// Deleting returns the definitions of every organisation that are being
// deleted, sorted by organisation and id.
func (s *Definitions) Deleting(ctx context.Context) ([]segment.Definition, error) {
	defs, err := s.every(ctx, beingDeleted)
	if err != nil {
		return nil, fmt.Errorf("segments being deleted: %w", err)
	}
	return defs, nil
}

// ErrCreateFinished is what AbandonCreate returns for a segment whose create
// has finished (or that is being deleted) since it was listed.
var ErrCreateFinished = errors.New("the segment's create has finished")

// UnfinishedCreates returns the static segments of every organisation whose
// create has not finished writing their list (status building: a request
// that stopped part way, or one still writing), sorted by organisation and
// id.
func (s *Definitions) UnfinishedCreates(ctx context.Context) ([]segment.Definition, error) {
	defs, err := s.every(ctx, segment.Definition.CreateUnfinished)
	if err != nil {
		return nil, fmt.Errorf("unfinished static creates: %w", err)
	}
	return defs, nil
}

// AbandonCreate marks a static segment whose create never finished as being
// deleted, as MarkDeleting does, unless the create has finished since
// (ErrCreateFinished): a retry of a create made with an Idempotency-Key may
// have taken it over and written the list.
func (s *Definitions) AbandonCreate(ctx context.Context, org, id string) (segment.Definition, error) {
	return s.update(ctx, org, id, true, func(d *segment.Definition) error {
		if !d.CreateUnfinished() {
			return ErrCreateFinished
		}
		d.Status, d.UpdatedAt = segment.StatusDeleting, time.Now().UTC()
		return nil
	})
}

// every reads the definitions of every organisation, in pipelined round
// trips of many organisations, and returns those keep accepts.
func (s *Definitions) every(ctx context.Context, keep func(segment.Definition) bool) ([]segment.Definition, error) {
	orgs, err := s.Orgs(ctx)
	if err != nil {
		return nil, err
	}
	var out []segment.Definition
	for chunk := range slices.Chunk(orgs, 256) {
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, len(chunk))
		for i, org := range chunk {
			cmds[i] = pipe.HGetAll(ctx, DefinitionsKey(org))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
		for i, org := range chunk {
			if out, err = decodeOrgDefinitions(out, org, cmds[i].Val(), keep); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// storedDefinition is the JSON of a definition in its organisation's hash. It
// is separate from segment.Definition so that the domain type can change
// without changing what is stored.
type storedDefinition struct {
	// ID is the segment id.
	ID string `json:"id"`
	// OrgID is the organisation that owns the segment.
	OrgID string `json:"orgId"`
	// Name is the segment's display name.
	Name string `json:"name"`
	// Description is the segment's description, left out when empty.
	Description string `json:"description,omitempty"`
	// URL is the segment's url, left out when empty.
	URL string `json:"url,omitempty"`
	// Type is "static" or "dynamic".
	Type string `json:"type"`
	// Criteria are the criteria of a dynamic segment; nil (left out) for a
	// static segment without any.
	Criteria *storedCriteria `json:"criteria,omitempty"`
	// Status is "building", "ready" or "deleting".
	Status string `json:"status"`
	// EstimatedSize is segment.Definition.EstimatedSize.
	EstimatedSize int64 `json:"estimatedSize"`
	// Scanned is segment.Definition.BackfillScanned, left out when 0.
	Scanned int64 `json:"backfillScanned,omitempty"`
	// Started is segment.Definition.BackfillStarted, left out when 0.
	Started int64 `json:"backfillStarted,omitempty"`
	// Earlier is the newest of EarlierAll, for builds that stored one
	// older generation as a number (a rolling upgrade runs both).
	Earlier int64 `json:"backfillEarlier,omitempty"`
	// EarlierAll is segment.Definition.BackfillEarlier, oldest first.
	EarlierAll []int64 `json:"backfillEarlierAll,omitempty"`
	// Generation is segment.Definition.Generation.
	Generation int64 `json:"generation"`
	// CreatedAt is when the segment was created, in UTC.
	CreatedAt time.Time `json:"createdAt"`
	// UpdatedAt is when the segment was last changed, in UTC.
	UpdatedAt time.Time `json:"updatedAt"`
	// Write identifies the update that wrote the definition (none for a
	// create): casDefinitionScript tells a resend of its own write by it.
	Write string `json:"write,omitempty"`
}

// storedWriteID returns the Write of a stored definition, "" when it has
// none or cannot be read (the update then writes it whole, as changed).
func storedWriteID(raw string) string {
	var w struct {
		Write string `json:"write"`
	}
	_ = json.Unmarshal([]byte(raw), &w)
	return w.Write
}

// newWriteID returns a random identifier for one update's write.
func newWriteID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

type storedCriteria struct {
	// Include are the include criteria.
	Include []storedCriterion `json:"include"`
	// Exclude are the exclude criteria.
	Exclude []storedCriterion `json:"exclude"`
}

// storedCriterion keeps the value raw: present (even as null) exactly when
// the criterion has one.
type storedCriterion struct {
	// Field is the criterion's field path.
	Field string `json:"field"`
	// Operator is the criterion's operator.
	Operator string `json:"operator"`
	// Value is the criterion's value as JSON text, nil when the criterion has
	// none.
	Value json.RawMessage `json:"value,omitempty"`
}

// encodeDefinition returns the stored form of d, written by no update.
func encodeDefinition(d segment.Definition) (string, error) { return encodeStored(d, "") }

// encodeStored is encodeDefinition with the identifier of the update that
// writes it.
func encodeStored(d segment.Definition, write string) (string, error) {
	w := storedDefinition{Write: write,
		ID: d.ID, OrgID: d.OrgID, Name: d.Name, Description: d.Description, URL: d.URL,
		Type: string(d.Type), Status: string(d.Status), EstimatedSize: d.EstimatedSize, Scanned: d.BackfillScanned, Started: d.BackfillStarted,
		Generation: d.Generation, CreatedAt: d.CreatedAt.UTC(), UpdatedAt: d.UpdatedAt.UTC(),
	}
	if n := len(d.BackfillEarlier); n > 0 {
		w.Earlier, w.EarlierAll = d.BackfillEarlier[n-1], d.BackfillEarlier
	}
	if d.Type == segment.TypeDynamic || len(d.Criteria.Include)+len(d.Criteria.Exclude) > 0 {
		c := &storedCriteria{Include: []storedCriterion{}, Exclude: []storedCriterion{}}
		for _, list := range []struct {
			in  []segment.Criterion
			out *[]storedCriterion
		}{{d.Criteria.Include, &c.Include}, {d.Criteria.Exclude, &c.Exclude}} {
			for _, cr := range list.in {
				sc := storedCriterion{Field: cr.Field, Operator: cr.Operator}
				if cr.HasValue || cr.Value != nil {
					v, err := json.Marshal(cr.Value)
					if err != nil {
						return "", fmt.Errorf("encode criterion %s: %w", cr.Field, err)
					}
					sc.Value = v
				}
				*list.out = append(*list.out, sc)
			}
		}
		w.Criteria = c
	}
	b, err := json.Marshal(w)
	if err != nil {
		return "", fmt.Errorf("encode segment %s: %w", d.ID, err)
	}
	return string(b), nil
}

func decodeDefinition(raw string) (segment.Definition, error) {
	var w storedDefinition
	if err := json.Unmarshal([]byte(raw), &w); err != nil {
		return segment.Definition{}, fmt.Errorf("decode stored segment: %w", err)
	}
	d := segment.Definition{
		ID: w.ID, OrgID: w.OrgID, Name: w.Name, Description: w.Description, URL: w.URL,
		Type: segment.Type(w.Type), Status: segment.Status(w.Status), EstimatedSize: w.EstimatedSize,
		Generation: w.Generation, CreatedAt: w.CreatedAt, UpdatedAt: w.UpdatedAt, BackfillScanned: w.Scanned, BackfillStarted: w.Started,
	}
	switch {
	case len(w.EarlierAll) > 0:
		d.BackfillEarlier = w.EarlierAll
	case w.Earlier != 0: // stored by a build that kept one
		d.BackfillEarlier = []int64{w.Earlier}
	}
	if w.Criteria != nil {
		var err error
		if d.Criteria.Include, err = decodeStoredCriteria(w.Criteria.Include); err != nil {
			return segment.Definition{}, err
		}
		if d.Criteria.Exclude, err = decodeStoredCriteria(w.Criteria.Exclude); err != nil {
			return segment.Definition{}, err
		}
	}
	return d, nil
}

func decodeStoredCriteria(in []storedCriterion) ([]segment.Criterion, error) {
	out := make([]segment.Criterion, 0, len(in))
	for _, sc := range in {
		c := segment.Criterion{Field: sc.Field, Operator: sc.Operator}
		if len(sc.Value) > 0 {
			c.HasValue = true
			if err := json.Unmarshal(sc.Value, &c.Value); err != nil {
				return nil, fmt.Errorf("decode stored criterion %s: %w", sc.Field, err)
			}
		}
		out = append(out, c)
	}
	return out, nil
}
