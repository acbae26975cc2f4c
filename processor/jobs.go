package processor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// JobUsers is the Redis side of the background jobs.
type JobUsers interface {
	// ScanUserIDs calls fn with every stored user id of org, deleted users
	// included, a page at a time; fn is never called concurrently, nor again
	// once it has returned an error.
	ScanUserIDs(ctx context.Context, org string, fn func(ids []string) error) error
	// ViewUsers reads each user's revision, profile and what f asks for;
	// deleted or unknown users come back with an empty profile.
	ViewUsers(ctx context.Context, org string, users []string, f membership.ViewFields) ([]membership.SegmentView, error)
	// Amend applies each change atomically per user and reports the outcome
	// of each.
	Amend(ctx context.Context, as []membership.Amend) ([]membership.AmendOutcome, error)
	// Project mirrors membership changes onto the public per-segment sets,
	// idempotently, and returns the segments it found deleted (see
	// membership.Deletions).
	Project(ctx context.Context, ps []membership.Projection) (membership.Deletions, error)
	// UserSegmentSets returns the public segment set of each user, in the
	// order of users.
	UserSegmentSets(ctx context.Context, org string, users []string) ([][]string, error)
	// ProjectedRevisions returns, for each change, the revision of the write
	// whose decision the change's segment set holds for its user; -1 for a
	// user with none.
	ProjectedRevisions(ctx context.Context, cs []events.Change) ([]int64, error)
	// IndexAll adds every stored user of every organisation to its
	// organisation's index, once per deployment, and returns how many users
	// it added.
	IndexAll(ctx context.Context) (int64, error)
	// MarkPublished records that the outbox entries ps name are published.
	MarkPublished(ctx context.Context, ps []membership.Published) error
}

// JobSchedules stores the timers of time-relative criteria.
type JobSchedules interface {
	// Schedule records each due instant where it is earlier than the user's
	// timer: a timer only ever moves earlier.
	Schedule(ctx context.Context, due []membership.Due) error
	// Claim takes up to limit timers of org due at or before now for owner
	// (this instance), leasing them for lease.
	Claim(ctx context.Context, org, owner string, now time.Time, lease time.Duration, limit int) ([]membership.Claimed, error)
	// TakeOver makes the unfinished claims of owners, instances that
	// stopped beating, due at now before their leases end, and returns how
	// many.
	TakeOver(ctx context.Context, org string, owners []string, now time.Time) (int, error)
	// Done ends the claims cs: each timer goes, or moves to next[i] where
	// that is not zero.
	Done(ctx context.Context, cs []membership.Claimed, next []time.Time) error
	// Unfinished returns, for each user of org whose timer claim has not
	// ended and whose lease ran out by leasedTo (the zero time: whatever its
	// lease), the flips its changes may have been written under.
	Unfinished(ctx context.Context, org string, leasedTo time.Time) (map[string][]time.Time, error)
	// OldestDue returns the earliest flip instant of org at or before now
	// that no round has fired yet: a timer due, or one under a claim not
	// finished, counted from its flip.
	OldestDue(ctx context.Context, org string, now time.Time) (time.Time, bool, error)
}

// JobDefinitions is what the jobs read and change of definitions.
type JobDefinitions interface {
	DefinitionReader
	BuildRecorder
	DeletionRecorder
}

// DefinitionReader reads the definitions the jobs work on.
type DefinitionReader interface {
	// Orgs returns the organisations that have or had definitions, sorted.
	Orgs(ctx context.Context) ([]string, error)
	// OrgDefinitions returns the definitions of one organisation, sorted by
	// id, leaving out segments being deleted.
	OrgDefinitions(ctx context.Context, org string) ([]segment.Definition, error)
	// Get returns one definition, deleting ones included, or
	// membership.ErrNotFound.
	Get(ctx context.Context, org, id string) (segment.Definition, error)
	// Revision returns the definitions' revision, 0 before the first change.
	Revision(ctx context.Context) (int64, error)
	// MoveRevision moves the definitions' revision for org, changing no
	// definition, and returns the revision it moved to.
	MoveRevision(ctx context.Context, org string) (int64, error)
}

// BuildRecorder records in a definition how its backfill and its size
// estimate stand.
type BuildRecorder interface {
	// MarkReady sets a segment's status to ready, but only while the segment
	// is building that generation.
	MarkReady(ctx context.Context, org, id string, generation int64) error
	// SetEstimatedSize records a segment's estimated size, n users, read
	// at generation, unless the segment has moved past it or is building.
	SetEstimatedSize(ctx context.Context, org, id string, generation, n int64) error
	// SetBackfillProgress records how many users the backfill of generation
	// has scanned.
	SetBackfillProgress(ctx context.Context, org, id string, generation, scanned int64) error
	// BeginBackfill records that a backfill of generation is about to write
	// and reports whether it is the first attempt to, and the older
	// generations whose backfills began and did not end cleanly.
	BeginBackfill(ctx context.Context, org, id string, generation int64) (first bool, unfinished []int64, err error)
	// EndBackfill records that the backfill of generation, stopped by a
	// change of the segment, published everything it wrote.
	EndBackfill(ctx context.Context, org, id string, generation int64) error
}

// DeletionRecorder records the deletions of segments and the static creates
// abandoned, through to the definition's removal.
type DeletionRecorder interface {
	// Deleting returns the definitions of every organisation that are being
	// deleted.
	Deleting(ctx context.Context) ([]segment.Definition, error)
	// MarkDeleting sets a segment's status to segment.StatusDeleting and
	// returns the definition.
	MarkDeleting(ctx context.Context, org, id string) (segment.Definition, error)
	// UnfinishedCreates returns the static segments of every organisation
	// whose create has not finished writing their list.
	UnfinishedCreates(ctx context.Context) ([]segment.Definition, error)
	// AbandonCreate marks a static segment whose create never finished as
	// being deleted, unless the create has finished since
	// (membership.ErrCreateFinished).
	AbandonCreate(ctx context.Context, org, id string) (segment.Definition, error)
	// Delete removes a definition, or returns membership.ErrNotFound; it does
	// not touch the segment's membership.
	Delete(ctx context.Context, org, id string) error
}

// SegmentRemover removes a deleted segment's members, publishing their
// exits (membership.Sets.DeleteSegment).
type SegmentRemover interface {
	// DeleteSegment removes every member of the segment, handing their exits
	// to publish first, and returns how many members it removed.
	DeleteSegment(ctx context.Context, org, seg string, at time.Time, publish func(context.Context, []events.Change) error) (int, error)
	// ForgetSegment takes seg out of the segment set of every stored user of
	// org and returns how many sets held it.
	ForgetSegment(ctx context.Context, org, seg string) (int64, error)
}

// Sizer counts and lists segment members.
type Sizer interface {
	// Sizes returns the exact size of each segment of ids, by id.
	Sizes(ctx context.Context, org string, ids []string) (map[string]int64, error)
	// AllMembers returns every user id of a segment, sorted.
	AllMembers(ctx context.Context, org, seg string) ([]string, error)
}

// Coordinator hands a job to one instance and tracks which definitions
// revision each instance has in force.
type Coordinator interface {
	// TryLock takes the named lease for owner for ttl, or extends it when
	// owner holds it, and reports whether owner holds it now.
	TryLock(ctx context.Context, name, owner string, ttl time.Duration) (bool, error)
	// Extend extends the named lease while owner holds it; false when it has
	// lapsed or another owner holds it.
	Extend(ctx context.Context, name, owner string, ttl time.Duration) (bool, error)
	// Unlock gives the named lease up if owner still holds it.
	Unlock(ctx context.Context, name, owner string) error
	// Beat records that instance id has definitions revision rev in force at
	// now.
	Beat(ctx context.Context, id string, rev int64, now time.Time) error
	// Leave removes instance id from the heartbeat.
	Leave(ctx context.Context, id string) error
	// LiveRevisions returns the revision in force at each instance that beat
	// within maxAge of now, by instance id.
	LiveRevisions(ctx context.Context, now time.Time, maxAge time.Duration) (map[string]int64, error)
	// Beats returns each instance's last beat as stored, by instance id;
	// each beat stores a value other than the one before.
	Beats(ctx context.Context) (map[string]string, error)
	// Held reports, for each name, whether its lease is held now.
	Held(ctx context.Context, names []string) ([]bool, error)
}

// ChangePublisher publishes membership changes.
type ChangePublisher interface {
	// Publish publishes changes to the membership topic and returns once they
	// are acknowledged.
	Publish(ctx context.Context, changes []events.Change) error
}

// CommittedOffsets reads how far the processors' consumer group has
// committed the profile topic.
type CommittedOffsets interface {
	// Committed returns the committed offset (the next record to process)
	// of each partition of the profile topic that has one. The stream
	// commits a record once its changes are published.
	Committed(ctx context.Context) (map[int]int64, error)
}

// JobsConfig wires Jobs.
type JobsConfig struct {
	// InstanceID names this instance in the heartbeat and in the owners of
	// the leases it takes.
	InstanceID string
	// Definitions is the store of segment definitions.
	Definitions JobDefinitions
	// Users is the store of users' profiles and segment sets that backfills
	// and timers re-evaluate.
	Users JobUsers
	// Schedules holds the timers of time-relative criteria.
	Schedules JobSchedules
	// Sizes reads segment sizes and members, for the estimatedSize refresh
	// and for backfills.
	Sizes Sizer
	// Coordinator holds the jobs' leases and this instance's heartbeat.
	Coordinator Coordinator
	// Publisher publishes the membership changes the jobs make.
	Publisher ChangePublisher
	// Remover, when not nil, finishes the deletions that their request left
	// undone (see DeletionGrace).
	Remover SegmentRemover
	// Registry gives the compiled definitions in force; it must not be nil.
	Registry *Registry
	// Processor, when not nil, is this instance's processor, whose
	// AppliedRevision the heartbeat reports; nil reports the registry's
	// revision.
	Processor *Processor
	// Committed, when not nil, reads the consumer group's committed offsets
	// of ProfileTopic: a job's change then publishes again no change of the
	// stream that the user's last applied profile event, below its
	// partition's committed offset, shows published (see
	// unpublishedStream). Nil takes every recent one for possibly
	// unpublished.
	Committed CommittedOffsets
	// ProfileTopic is the topic whose offsets Committed reads.
	ProfileTopic string
	// Metrics counts the membership changes the jobs publish; nil counts nothing.
	Metrics *Metrics
	// EstimateInterval is how often each segment's estimatedSize is refreshed
	// from its exact size (default 1 hour).
	EstimateInterval time.Duration
	// TimerInterval is how often due timers are fired (default 1 s).
	TimerInterval time.Duration
	// ProgressInterval is how often a backfill records its progress in the
	// segment's definition, where the API shows it (default 500 ms).
	ProgressInterval time.Duration
	// DeletionGrace is how long a segment may be being deleted before the
	// jobs finish its deletion (default 10 minutes: longer than a DELETE
	// request, whose retry by the client may be under way, can run).
	DeletionGrace time.Duration
	// Registerer registers the jobs' metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives the jobs' logs; it must not be nil.
	Logger *slog.Logger
	// Now is the clock (nil is time.Now).
	Now func() time.Time
}

// Jobs runs what follows definitions and time: the heartbeat, backfills of
// new or changed dynamic segments, timers of time-relative criteria, the
// estimatedSize refresh, the finishing of deletions that their request left
// undone (with a Remover), and once the completion of the organisations'
// user indexes. Every instance runs them; leases in Redis give each
// backfill, refresh, deletion search and completion to one instance, and
// timers are claimed one by one.
type Jobs struct {
	cfg       JobsConfig
	progress  prometheus.Gauge
	backfill  *prometheus.CounterVec
	timers    prometheus.Counter
	timerLag  prometheus.Gauge
	takenOver prometheus.Counter
	mu        sync.Mutex
	running   map[string]bool
	retries   backfillRetries
	// backfills counts the running backfill goroutines, which Run waits for.
	backfills sync.WaitGroup
	// attempts numbers this instance's backfill attempts.
	attempts atomic.Uint64
	// roundLimit bounds a timer round (roundFinishLimit).
	roundLimit time.Duration
	// silence is how long another instance's beat stays the same before
	// its timer claims are taken over (claimOwnerSilence).
	silence time.Duration
	// beatsMu guards beatsSeen, each other instance's beat as last read and
	// since when (this process's clock) it has read that value, and
	// beatsRead, when it last read them.
	beatsMu   sync.Mutex
	beatsSeen map[string]seenBeat
	beatsRead time.Time
	// beatsGap is how long between two reads of the beats restarts the
	// count of every silence (beatReadGap).
	beatsGap time.Duration
	// inForce holds each backfill and timer round in progress, with the
	// definitions revision its work is still valid at; the heartbeat
	// reports the oldest, so that the revision gate of a change waits for
	// work that the change makes stale to stop.
	inForce map[*heldRevision]struct{}
	// committed is the consumer group's committed offsets as last read.
	committed struct {
		sync.Mutex
		offsets map[int]int64
		read    time.Time
		// reading is set while a caller reads them: the others take the
		// offsets read before rather than wait.
		reading bool
	}
}

// errSuperseded stops a backfill whose segment changed criteria or is being
// deleted: the backfill of the new generation, or the deletion, takes over.
var errSuperseded = errors.New("segment changed while it was backfilled")

// backfillLease is how long a backfill's lease lasts unrenewed.
const backfillLease = 30 * time.Second

// NewJobs returns the jobs; call Run to start them. It fails when
// cfg.Registerer already holds the jobs' metrics.
func NewJobs(cfg JobsConfig) (*Jobs, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TimerInterval <= 0 {
		cfg.TimerInterval = time.Second
	}
	if cfg.DeletionGrace <= 0 {
		cfg.DeletionGrace = 10 * time.Minute
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = 500 * time.Millisecond
	}
	if cfg.EstimateInterval <= 0 {
		cfg.EstimateInterval = time.Hour
	}
	j := &Jobs{cfg: cfg, running: map[string]bool{}, retries: backfillRetries{}, inForce: map[*heldRevision]struct{}{}, roundLimit: roundFinishLimit, silence: claimOwnerSilence, beatsSeen: map[string]seenBeat{}, beatsGap: beatReadGap,
		progress: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "segmentd_backfill_users_scanned",
			Help: "Users scanned by the backfills running on this instance (0 when none runs).",
		}),
		backfill: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "segmentd_backfills_total",
			Help: "Backfills finished, by result.",
		}, []string{"result"}),
		timers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "segmentd_timers_fired_total",
			Help: "Timers of time-relative criteria fired.",
		}),
		takenOver: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "segmentd_timer_claims_taken_over_total",
			Help: "Timer claims of instances that stopped beating (killed, frozen, cut off) taken over before their leases ended.",
		}),
		timerLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "segmentd_timers_lag_seconds",
			Help: "After this instance's last timer rounds, how long ago the oldest flip not fired yet came due (a timer due, or one under a claim not finished), the largest over organisations (0 when none is).",
		}),
	}
	if cfg.Registerer != nil {
		if err := registerAll(cfg.Registerer, j.progress, j.backfill, j.timers, j.timerLag, j.takenOver); err != nil {
			return nil, err
		}
	}
	// At 0 from the start, so that the first of each counts in rate().
	for _, r := range []string{"ready", "superseded", "error"} {
		j.backfill.WithLabelValues(r)
	}
	return j, nil
}

// Run runs every job until ctx ends.
func (j *Jobs) Run(ctx context.Context) error {
	every := func(ctx context.Context, wg *sync.WaitGroup, period time.Duration, f func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(period)
			defer t.Stop()
			for {
				f(ctx)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	// The beat goes on until the jobs have stopped, not when ctx ends: a
	// timer round under way finishes (up to roundFinishLimit), and another
	// instance that saw the beat stand still for claimOwnerSilence would
	// take its claims over and publish their changes a second time; the
	// revision the round holds must keep the revision gates waiting, too.
	var beating sync.WaitGroup
	beatCtx, stopBeat := context.WithCancel(context.WithoutCancel(ctx))
	every(beatCtx, &beating, 250*time.Millisecond, j.beat)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		j.indexUsers(ctx)
	}()
	every(ctx, &wg, 500*time.Millisecond, j.startBackfills)
	every(ctx, &wg, j.cfg.TimerInterval, j.fireTimers)
	every(ctx, &wg, estimateTick(j.cfg.EstimateInterval), j.refreshEstimates)
	if j.cfg.Remover != nil {
		every(ctx, &wg, time.Minute, j.finishDeletions)
	}
	wg.Wait()
	// A backfill stops at its next call once ctx ends; its lock and revision
	// must be released before this instance leaves.
	j.backfills.Wait()
	stopBeat()
	beating.Wait()
	// Leave promptly, so that backfills elsewhere do not wait for us.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := j.cfg.Coordinator.Leave(lctx, j.cfg.InstanceID); err != nil {
		j.cfg.Logger.Warn("leave: other instances wait for this one's heartbeat to expire", "err", err)
	}
	return nil
}

// indexLease bounds how long another instance waits for a completion of the
// user indexes whose instance died; a longer scan only means two instances
// do the same idempotent work.
const indexLease = 10 * time.Minute

// errIndexBusy retries the completion of the user indexes later: another
// instance holds it, and may die before it finishes.
var errIndexBusy = errors.New("another instance is completing the user indexes")

// indexUsers completes every organisation's index of its users, once per
// deployment (membership.Users.IndexAll: nothing to do unless a build older
// than the indexes stored users), one instance at a time, retrying until it
// is done or ctx ends. Until then each organisation's first read indexes
// its own users, as before.
func (j *Jobs) indexUsers(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = time.Second
	bo.MaxInterval = 30 * time.Second
	bo.MaxElapsedTime = 0
	_ = backoff.Retry(func() error {
		ok, err := j.cfg.Coordinator.TryLock(ctx, "user-index", j.cfg.InstanceID, indexLease)
		switch {
		case ctx.Err() != nil:
			return backoff.Permanent(ctx.Err())
		case err != nil:
			j.cfg.Logger.Warn("complete the user indexes", "err", err)
			return err
		case !ok:
			return errIndexBusy
		}
		defer func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			_ = j.cfg.Coordinator.Unlock(uctx, "user-index", j.cfg.InstanceID)
		}()
		n, err := j.cfg.Users.IndexAll(ctx)
		if n > 0 {
			j.cfg.Logger.Info("added stored users to their organisations' indexes", "users", n)
		}
		if err != nil && ctx.Err() == nil {
			j.cfg.Logger.Warn("complete the user indexes", "err", err)
		}
		return err
	}, backoff.WithContext(bo, ctx))
}

// unpublishedFrom returns the earliest instant at which a stream write
// still unpublished may have decided its changes, as seen at now:
// membership.ReplayWindow before now (a batch of an instance that died is
// replayed within it), or as long before the oldest batch this instance's
// processor has not published (Kafka failing: the instances that share it
// are held up as long, each with a batch of its own a little older or
// younger).
func (j *Jobs) unpublishedFrom(now time.Time) time.Time {
	from := now.Add(-membership.ReplayWindow)
	if j.cfg.Processor != nil {
		if t := j.cfg.Processor.UnfinishedSince(); !t.IsZero() && t.Add(-membership.ReplayWindow).Before(from) {
			from = t.Add(-membership.ReplayWindow)
		}
	}
	return from
}

// unpublished returns what tells, as seen at now, the stream entries that
// may still be unpublished: those decided from unpublishedFrom on, unless
// the user's last applied event is below its partition's committed offset
// (read at most once each committedRefresh).
func (j *Jobs) unpublished(ctx context.Context, now time.Time) unpublishedStream {
	u := unpublishedStream{from: j.unpublishedFrom(now)}
	if j.cfg.Committed == nil {
		return u
	}
	c := &j.committed
	c.Lock()
	read := !c.reading && time.Since(c.read) >= committedRefresh
	c.reading = c.reading || read
	offsets := c.offsets
	c.Unlock()
	if read {
		// A failed read keeps the offsets read before: each still tells
		// what was published then.
		rctx, cancel := context.WithTimeout(ctx, committedRefresh)
		fresh, err := j.cfg.Committed.Committed(rctx)
		cancel()
		if err == nil {
			offsets = fresh
		} else if ctx.Err() == nil {
			j.cfg.Logger.Debug("committed offsets unread; stream changes taken by their age", "err", err)
		}
		c.Lock()
		c.offsets, c.read, c.reading = offsets, time.Now(), false
		c.Unlock()
	}
	u.topic, u.committed = topicHash(j.cfg.ProfileTopic), offsets
	return u
}

// committedRefresh is how often the jobs read the committed offsets, at
// most: a stream batch is committed within milliseconds of its
// publication, and a timer flips a user seconds after its event.
const committedRefresh = 250 * time.Millisecond

func (j *Jobs) beat(ctx context.Context) {
	rev := int64(0)
	if j.cfg.Processor != nil {
		rev = j.cfg.Processor.AppliedRevision()
	} else if s := j.cfg.Registry.Current(); s != nil {
		rev = s.Revision
	}
	j.mu.Lock()
	for h := range j.inForce {
		if h.def != nil {
			j.stillCurrent(h) // moves a backfill's revision up while its segment is unchanged
		}
		rev = min(rev, h.rev.Load())
	}
	j.mu.Unlock()
	if rev == 0 {
		return
	}
	if err := j.cfg.Coordinator.Beat(ctx, j.cfg.InstanceID, rev, j.cfg.Now()); err != nil && ctx.Err() == nil {
		j.cfg.Logger.Warn("heartbeat", "err", err)
	}
}

// startBackfills starts a backfill for every building segment that no
// backfill of this instance is working on; the lease decides between instances.
func (j *Jobs) startBackfills(ctx context.Context) {
	snap := j.cfg.Registry.Current()
	if snap == nil {
		return
	}
	building := map[string]bool{}
	now := time.Now()
	// One move of the revision for each organisation serves every backfill
	// started there now: it comes after snap read their generations (see
	// Backfill), and they then wait for the same revision together.
	moves := map[string]func(context.Context) (int64, error){}
	for org, o := range snap.Orgs {
		for id, cs := range o.Segments {
			if cs.Def.Status != segment.StatusBuilding {
				continue
			}
			key := fmt.Sprintf("%s/%s/%d", org, id, cs.Def.Generation)
			building[key] = true
			j.mu.Lock()
			// A few at a time: each reads every user of its organisation,
			// and a thousand segments created at once must not start a
			// thousand such reads.
			busy := j.running[key] || j.retries.waiting(key, now) || len(j.running) >= maxConcurrentBackfills
			if !busy {
				j.running[key] = true
			}
			j.mu.Unlock()
			if busy {
				continue
			}
			move := moves[org]
			if move == nil {
				// Made once, by the first backfill of org that holds its
				// lease: an instance whose backfills another instance holds
				// moves nothing.
				var once sync.Once
				var rev int64
				var err error
				move = func(ctx context.Context) (int64, error) {
					once.Do(func() {
						if rev, err = j.cfg.Definitions.MoveRevision(ctx, org); err == nil {
							if _, ferr := j.cfg.Registry.Fresh(ctx); ferr == nil {
								j.beat(ctx)
							}
						}
					})
					return rev, err
				}
				moves[org] = move
			}
			j.backfills.Add(1)
			go func() {
				defer j.backfills.Done()
				err := j.runBackfill(ctx, org, cs, snap.Revision, move)
				j.mu.Lock()
				delete(j.running, key)
				var wait time.Duration
				if err != nil && !errors.Is(err, errSuperseded) {
					wait = j.retries.failed(key, time.Now())
				} else {
					delete(j.retries, key)
				}
				j.mu.Unlock()
				switch {
				case errors.Is(err, errSuperseded):
					j.backfill.WithLabelValues("superseded").Inc()
					j.cfg.Logger.Info("backfill stopped: the segment changed", "org", org, "segment", id, "generation", cs.Def.Generation)
				case err != nil && ctx.Err() == nil:
					j.backfill.WithLabelValues("error").Inc()
					j.cfg.Logger.Warn("backfill failed; it will be retried", "org", org, "segment", id, "retry_in", wait.Round(time.Millisecond), "err", err)
				}
			}()
		}
	}
	j.mu.Lock()
	for key := range j.retries {
		if !building[key] {
			delete(j.retries, key) // ready, superseded or deleted meanwhile
		}
	}
	j.mu.Unlock()
}

// unreadableRetry is how long a timer waits when its user's stored state
// cannot be read.
const unreadableRetry = time.Minute

// maxConcurrentBackfills bounds the backfills an instance runs at once; the
// others start as these finish.
const maxConcurrentBackfills = 4

// retryState is when a failed backfill may start again.
type retryState struct {
	bo *backoff.ExponentialBackOff
	at time.Time
}

// backfillRetries holds the failed backfills by key, each waiting longer
// after every failure in a row (an outage must not restart them twice a
// second for its whole length).
type backfillRetries map[string]*retryState

// waiting reports whether key's backfill failed and may not start yet.
func (r backfillRetries) waiting(key string, now time.Time) bool {
	st := r[key]
	return st != nil && now.Before(st.at)
}

// failed records a failure of key's backfill at now and returns how long
// it waits before the next attempt.
func (r backfillRetries) failed(key string, now time.Time) time.Duration {
	st := r[key]
	if st == nil {
		bo := backoff.NewExponentialBackOff()
		bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 500*time.Millisecond, 10*time.Second, 0
		st = &retryState{bo: bo}
		r[key] = st
	}
	wait := st.bo.NextBackOff()
	st.at = now.Add(wait)
	return wait
}

// Backfill computes the membership of one dynamic segment over every stored
// profile of its organisation, then marks it ready. It waits until every
// live instance evaluates with definitions at least as new as rev, so that
// no stream batch still running on the old definitions writes after it; its
// writes compare-and-set each user's revision, so it never overwrites a
// newer profile's result. One backfill of a segment runs at a time, across
// instances and generations; one whose segment changed criteria or is being
// deleted stops at its next page (errSuperseded), and until then holds back
// the revision gate of that change.
func (j *Jobs) Backfill(ctx context.Context, org string, cs *CompiledSegment, rev int64) error {
	return j.runBackfill(ctx, org, cs, rev, func(ctx context.Context) (int64, error) {
		return j.cfg.Definitions.MoveRevision(ctx, org)
	})
}

// runBackfill is Backfill, with the move of the revision it waits for
// given: move must move it after the generation of cs was read from the
// stored definitions, and is called once the backfill holds its lease and
// has found that generation still building.
func (j *Jobs) runBackfill(ctx context.Context, org string, cs *CompiledSegment, rev int64, move func(context.Context) (int64, error)) error {
	lock := "backfill:" + org + ":" + cs.Def.ID
	// An owner of its own per attempt: an attempt whose lease lapsed sees
	// that another one has held it since, even on this instance.
	owner := j.cfg.InstanceID + "/" + strconv.FormatInt(cs.Def.Generation, 10) + "/" + strconv.FormatUint(j.attempts.Add(1), 10)
	ok, err := j.cfg.Coordinator.TryLock(ctx, lock, owner, backfillLease)
	if err != nil || !ok {
		return err
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := j.cfg.Coordinator.Unlock(uctx, lock, owner); err != nil {
			j.cfg.Logger.Warn("backfill unlock: the lease expires by itself", "org", org, "segment", cs.Def.ID, "err", err)
		}
	}()
	// From here the work stops when the lease turns out lost.
	ctx, stopLease := membership.KeepLease(ctx, j.cfg.Coordinator, lock, owner, backfillLease)
	defer stopLease()
	// The snapshot that asked for this backfill may predate its end (here or
	// on another instance): a generation already built, or replaced, or a
	// segment deleted, needs no scan.
	if cur, err := j.cfg.Definitions.Get(ctx, org, cs.Def.ID); errors.Is(err, membership.ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	} else if cur.Generation != cs.Def.Generation || cur.Status != segment.StatusBuilding {
		return nil
	}
	// The snapshot that asked for this backfill may say an older revision
	// than the one that put its generation in force (a reload reads the
	// revision, then the definitions), and a change's definition is written
	// before its revision moves: its writer may not have moved it yet, or
	// may have died in between. A revision moved after the stored
	// definition showed this generation is one at which every instance
	// evaluates with it.
	now, err := move(ctx)
	if err != nil {
		return err
	}
	rev = max(rev, now)
	if err := NewRevisionGate(j.cfg.Coordinator, j.cfg.Now).Wait(ctx, rev); err != nil {
		return err
	}
	inForce := j.holdRevision(rev, org, &cs.Def)
	defer j.releaseRevision(inForce)
	var superseded atomic.Bool
	// A new segment's member set is each user's membership (see
	// knownMembers). After a criteria change it may not be: an instance that
	// died between writing a user under the old criteria and projecting the
	// write, and that the gate stopped waiting for, left the user's set
	// ahead of the member set; each user's own set is read then.
	var known map[string]bool
	if cs.Def.Generation == 1 {
		if known, err = j.knownMembers(ctx, org, cs.Def.ID); err != nil {
			return err
		}
	}
	first, unfinished, err := j.cfg.Definitions.BeginBackfill(ctx, org, cs.Def.ID, cs.Def.Generation)
	if err != nil {
		return err
	}
	cause := backfillCause(cs.Def.ID, cs.Def.Generation)
	pass := amendPass{org: org, cs: cs, causeOf: func(string) events.Cause { return cause }, known: known, retry: !first}
	// Backfills of older criteria may have left changes unpublished.
	older := make([]events.Cause, len(unfinished))
	for i, g := range unfinished {
		older[i] = backfillCause(cs.Def.ID, g)
	}
	// So may timer rounds of older criteria that failed: once the criteria
	// hold no relative date, no round retries them. While they do, a round
	// that runs publishes its own changes, and one that failed is retried
	// by a round once its lease runs out: only those past their lease are
	// taken over here (a live one's changes would be published twice).
	var timed map[string][]time.Time
	if cs.Def.Generation > 1 {
		var leasedTo time.Time // any claim
		if cs.Rule.TimeDependent() {
			leasedTo = j.cfg.Now()
		}
		if timed, err = j.cfg.Schedules.Unfinished(ctx, org, leasedTo); err != nil {
			return err
		}
	}
	if len(timed) > 0 {
		// Only pages holding such users read the users' outboxes.
		pass.outboxOf = func(user string) bool { return len(timed[user]) > 0 }
	}
	if len(older) > 0 || len(timed) > 0 {
		pass.retry = pass.retry || len(older) > 0
		// In any order: amendPage publishes what it finds in the order it
		// was written.
		pass.earlier = func(user string) []events.Cause {
			out := slices.Clip(older) // appended to as a copy: pages share older
			for _, at := range timed[user] {
				out = append(out, timeCause(cs.Def.ID, at))
			}
			return out
		}
	}
	scanned := 0
	// Pages go to a few workers, so that one page's Redis scripts, another's
	// decoding and a third's publishing overlap. Pages hold different users,
	// so their order does not matter.
	const workers = 4
	pages := make(chan []string, workers)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ids := range pages {
				if superseded.Load() {
					continue // drain
				}
				if err := j.amendPage(ctx, pass, ids); err != nil {
					errs <- err
					for range pages { // drain, so that the scan is not blocked
					}
					return
				}
				mu.Lock()
				scanned += len(ids)
				mu.Unlock()
				j.progress.Add(float64(len(ids)))
			}
		}()
	}
	lastReport := time.Now()
	err = j.cfg.Users.ScanUserIDs(ctx, org, func(ids []string) error {
		if err := context.Cause(ctx); errors.Is(err, membership.ErrLeaseLost) {
			return err
		}
		if !j.stillCurrent(inForce) {
			superseded.Store(true)
			return errSuperseded
		}
		if time.Since(lastReport) >= j.cfg.ProgressInterval {
			lastReport = time.Now()
			mu.Lock()
			n := scanned
			mu.Unlock()
			if err := j.cfg.Definitions.SetBackfillProgress(ctx, org, cs.Def.ID, cs.Def.Generation, int64(n)); err != nil {
				j.cfg.Logger.Warn("backfill progress", "org", org, "segment", cs.Def.ID, "err", err)
			}
		}
		select {
		case err := <-errs:
			return err
		case pages <- ids:
			return nil
		}
	})
	close(pages)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	j.progress.Sub(float64(scanned))
	if errors.Is(err, errSuperseded) {
		select {
		case err = <-errs: // a page failed: its changes may be unpublished
		default:
		}
	}
	if errors.Is(err, errSuperseded) && first && !errors.Is(context.Cause(ctx), membership.ErrLeaseLost) {
		// Every page handed out was finished: what this generation wrote is
		// published, if this attempt was its only one. A retry's pages are
		// its own, and entries an earlier attempt left unpublished may be on
		// pages it never reached: the generation stays recorded, so that
		// the next one looks for them.
		ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		// Held throughout: no other attempt wrote beside this one.
		if ok, eerr := j.cfg.Coordinator.Extend(ectx, lock, owner, backfillLease); !ok || eerr != nil {
			j.cfg.Logger.Warn("backfill end: lease not held, the generation stays recorded", "org", org, "segment", cs.Def.ID, "err", eerr)
		} else if eerr := j.cfg.Definitions.EndBackfill(ectx, org, cs.Def.ID, cs.Def.Generation); eerr != nil {
			j.cfg.Logger.Warn("backfill end", "org", org, "segment", cs.Def.ID, "err", eerr)
		}
	}
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, membership.ErrLeaseLost) {
		err = cause // the work stopped because the lease was lost
	}
	if err != nil {
		return fmt.Errorf("backfill %s/%s generation %d: %w", org, cs.Def.ID, cs.Def.Generation, err)
	}
	// The lease still held, no other attempt wrote meanwhile.
	if ok, err := j.cfg.Coordinator.Extend(ctx, lock, owner, backfillLease); err != nil {
		return fmt.Errorf("backfill lease: %w", err)
	} else if !ok {
		return fmt.Errorf("backfill %s/%s generation %d: %w", org, cs.Def.ID, cs.Def.Generation, membership.ErrLeaseLost)
	}
	if err := j.cfg.Definitions.MarkReady(ctx, org, cs.Def.ID, cs.Def.Generation); err != nil {
		return fmt.Errorf("backfill %s/%s: %w", org, cs.Def.ID, err)
	}
	j.backfill.WithLabelValues("ready").Inc()
	j.cfg.Logger.Info("segment ready", "org", org, "segment", cs.Def.ID, "generation", cs.Def.Generation, "users", scanned)
	return nil
}

func backfillCause(seg string, generation int64) events.Cause {
	return events.Cause{Type: events.CauseSegment, EventID: fmt.Sprintf("segment:%s:%d", seg, generation)}
}

// timeCause is the cause of a timer's changes of seg for the flip at:
// one per segment and flip, so that a flip fired again after a crash or a
// failure carries the same eventIds (the claim keeps the flip it was first
// taken for).
func timeCause(seg string, at time.Time) events.Cause {
	return events.Cause{Type: events.CauseTime, EventID: fmt.Sprintf("time:%s:%d", seg, at.UnixMilli())}
}

// building reports whether the backfill whose cause has eventID (see
// backfillCause) is of a segment of o still being built, at that generation
// or a later one (whose backfill publishes what an unfinished older one
// left).
func (o *OrgRules) building(eventID string) bool {
	cs, gen, ok := o.backfillOf(eventID)
	return ok && cs.Def.Status == segment.StatusBuilding && gen <= cs.Def.Generation
}

// backfillPublished reports whether e is the entry of a backfill that has
// published every change it wrote: its segment is ready at e's generation
// or a later one. A backfill marks its segment ready once every page is
// published, and a later generation's publishes what an unfinished older
// one left (Jobs.runBackfill) before it does. The stream and the timers
// need not publish such an entry again before their own change; a
// snapshot of the definitions that lags only leaves more entries to them.
func (o *OrgRules) backfillPublished(e membership.OutboxEntry) bool {
	if e.CauseType != events.CauseSegment {
		return false
	}
	cs, gen, ok := o.backfillOf(e.EventID)
	return ok && cs.Def.Status == segment.StatusReady && gen <= cs.Def.Generation
}

// backfillOf returns the segment of o, and the generation, of a backfill's
// cause (see backfillCause); ok is false when eventID is not one or its
// segment is not among o's.
func (o *OrgRules) backfillOf(eventID string) (cs *CompiledSegment, gen int64, ok bool) {
	rest, ok := strings.CutPrefix(eventID, "segment:")
	i := strings.LastIndexByte(rest, ':')
	if o == nil || !ok || i < 0 {
		return nil, 0, false
	}
	gen, err := strconv.ParseInt(rest[i+1:], 10, 64)
	cs = o.Segments[rest[:i]]
	return cs, gen, err == nil && cs != nil
}

// heldRevision is a backfill (def set) or a timer round in progress, and
// the definitions revision its work is valid at.
type heldRevision struct {
	rev atomic.Int64
	org string
	def *segment.Definition
}

// stillCurrent reports whether the backfill's definition is still the
// segment's, in build, in the registry's newest snapshot, and if so moves
// the revision it holds up to that snapshot's. Without a registry it
// reports true.
func (j *Jobs) stillCurrent(h *heldRevision) bool {
	if j.cfg.Registry == nil {
		return true
	}
	snap := j.cfg.Registry.Current()
	o := snap.Org(h.org)
	if o == nil || o.Segments[h.def.ID] == nil {
		return false
	}
	cur := o.Segments[h.def.ID].Def
	if cur.Generation != h.def.Generation || cur.Status != segment.StatusBuilding {
		return false
	}
	for {
		old := h.rev.Load()
		if old >= snap.Revision || h.rev.CompareAndSwap(old, snap.Revision) {
			return true
		}
	}
}

// holdRevision records work valid at definitions revision rev until
// releaseRevision: a backfill of def in org, or with def nil a timer round.
func (j *Jobs) holdRevision(rev int64, org string, def *segment.Definition) *heldRevision {
	h := &heldRevision{org: org, def: def}
	h.rev.Store(rev)
	j.mu.Lock()
	j.inForce[h] = struct{}{}
	j.mu.Unlock()
	return h
}

func (j *Jobs) releaseRevision(h *heldRevision) {
	j.mu.Lock()
	delete(j.inForce, h)
	j.mu.Unlock()
}

// knownMembersLimit bounds the member sets that a backfill reads whole
// instead of asking each user's segment set.
const knownMembersLimit = 200000

// knownMembers returns the segment's member set when it is small (always,
// for a new segment), nil otherwise. Read after the revision gate, it is
// each user's membership unless a write since has changed it, and such a
// write evaluated the new definition: for a user it misstates, the profile
// read after it gives the backfill that write's outcome, so the backfill
// asks for a change the amend script finds already made (AmendUnchanged),
// never skips one it needed. One read instead of a SISMEMBER per user.
func (j *Jobs) knownMembers(ctx context.Context, org, seg string) (map[string]bool, error) {
	sizes, err := j.cfg.Sizes.Sizes(ctx, org, []string{seg})
	if err != nil || sizes[seg] > knownMembersLimit {
		return nil, err
	}
	ids, err := j.cfg.Sizes.AllMembers(ctx, org, seg)
	if err != nil {
		return nil, err
	}
	known := make(map[string]bool, len(ids))
	for _, id := range ids {
		known[id] = true
	}
	return known, nil
}

// amendPass is one re-evaluation of a segment over some of its
// organisation's users.
type amendPass struct {
	org string
	cs  *CompiledSegment
	// causeOf gives each user's change events their cause.
	causeOf func(user string) events.Cause
	// known, when not nil, is the segment's member set as read after the
	// revision gate (see knownMembers); users read again take their
	// membership from their own segment sets.
	known map[string]bool
	// retry is set when an earlier attempt with the same causes may have
	// written changes and not published them: their entries are then
	// looked for in the users' outboxes.
	retry bool
	// outboxOf, when not nil, names users whose outboxes are read even
	// without retry: those that earlier gives causes to look for.
	outboxOf func(user string) bool
	// earlier, when not nil, gives each user's causes of unfinished
	// earlier attempts under causes other than this pass's (a timer moved
	// between two claims, the backfill of older criteria): entries found
	// under them are published as well, and the user is then evaluated and
	// amended as if its membership were unknown.
	earlier func(user string) []events.Cause
	// flipFound, when not nil, takes the flips that the entries found
	// give (see amendPage) instead of their being scheduled: a timer round
	// hands them to Done, as a timer scheduled during its claim, below its
	// lease, would let another instance claim the user again before the
	// round ends.
	flipFound func(user string, at time.Time)
	// later, when not nil, takes what the pass wrote, to be settled by the
	// caller with other passes' (see settlement), instead of its being
	// settled after each write.
	later *settlement
	// afterWrite, when not nil, is the context of the reads that follow a
	// write on its way to later: a timer round's passes stop short of the
	// round's end, and what they wrote must still reach the settlement.
	afterWrite context.Context
	// rules, when not nil, are the organisation's definitions: a finished
	// backfill's entries found in the users' outboxes are not published
	// again (see OrgRules.backfillPublished).
	rules *OrgRules
}

// settlement gathers the changes that several passes of a timer round
// wrote, to project, publish and schedule them in one go: a settle costs
// two Redis round trips and a Kafka produce however many changes it
// carries, and a round makes a pass for each time-relative segment.
// Changes keep the order in which the passes wrote them, which is each
// user's order of revisions.
type settlement struct {
	changes     []events.Change
	projections []membership.Projection
	due         []membership.Due
}

func (s *settlement) add(changes []events.Change, projections []membership.Projection, due []membership.Due) {
	s.changes = append(s.changes, changes...)
	s.projections = append(s.projections, projections...)
	s.due = append(s.due, due...)
}

// amendPage brings the segment's membership of the given users in line
// with its rule. Timers only ever move earlier (see
// Schedules.Schedule), which matters here: the caller may not know every
// time-relative segment's flip.
func (j *Jobs) amendPage(ctx context.Context, p amendPass, ids []string) error {
	org, seg := p.org, p.cs.Def.ID
	pending, known := ids, p.known
	for round := 0; len(pending) > 0; round++ {
		if round == 10 {
			return &stillChanging{seg: seg, users: pending}
		}
		// A user read again may hold this pass's own entry: a script whose
		// reply was lost and that the Redis client sent again finds the
		// revision it wrote itself, and answers stale.
		outbox := p.retry || round > 0 || (p.outboxOf != nil && slices.ContainsFunc(pending, p.outboxOf))
		views, err := j.viewUsers(ctx, org, seg, pending, known, outbox)
		if err != nil {
			return err
		}
		known = nil // users read again changed since: their own sets tell
		// The rule is applied at an instant after the read, never before:
		// a timer may have written a user's flip, at its instant, before
		// the read, and an earlier instant would undo it under a revision
		// that the compare-and-set finds current. What is written after
		// the read is caught by the compare-and-set.
		now := j.cfg.Now()
		unpublished := j.unpublished(ctx, now) // once a round, not per changed user
		unpublished.rules = p.rules
		results := evaluateViews(p.cs.Rule, views, now)
		var amends []membership.Amend
		var changes []events.Change
		var projections []membership.Projection
		var due []membership.Due
		var foundIDs map[string][]string // by user, the earlier attempts' entries added
		var retried []int                // indexes in changes of earlier attempts' changes
		for i, v := range views {
			r := results[i]
			if r.flip != nil {
				due = append(due, membership.Due{OrgID: org, UserID: v.UserID, At: *r.flip})
			}
			// Entries of unfinished attempts under other causes were written
			// before any of this pass's causes, so they are published first.
			// A user with one is amended whatever its membership seemed (the
			// amend script leaves it alone when it is already right): known
			// may predate that attempt's write.
			var found []membership.Projection
			if p.earlier != nil && round == 0 {
				// In the order they were written (their revisions), whatever
				// the order of the causes they were found under.
				for _, ec := range p.earlier(v.UserID) {
					if e, ok := findEntry(v.Outbox, ec.EventID, seg); ok {
						found = append(found, membership.Projection{Change: changeOf(org, v.UserID, seg, e, ec), Rev: e.Rev})
					}
				}
				slices.SortStableFunc(found, func(a, b membership.Projection) int { return cmp.Compare(a.Rev, b.Rev) })
			}
			earlier := len(found) > 0
			cause := p.causeOf(v.UserID)
			causeEntry, again := findEntry(v.Outbox, cause.EventID, seg)
			if earlier || again {
				// The first of the earlier attempts' changes may flip from a
				// decision that its attempt would have published first (see
				// precedingChanges), and that the decision's own retry leaves
				// out once it finds it superseded: it goes first here.
				first := causeEntry.Rev
				entered := again && causeEntry.Changes[0].Entered
				if earlier {
					first, entered = found[0].Rev, found[0].Change.Entered
				}
				own := []string{cause.EventID}
				for _, f := range found {
					own = append(own, f.Change.Cause.EventID)
				}
				for _, pc := range precedingChanges(membership.UserRef{OrgID: org, UserID: v.UserID}, v.Outbox, seg, first, entered, unpublished.take(v.Applied, func(e membership.OutboxEntry) bool {
					return slices.Contains(own, e.EventID)
				})) {
					changes = append(changes, pc.Change)
					projections = append(projections, pc)
				}
			}
			for _, f := range found {
				retried = append(retried, len(changes))
				changes = append(changes, f.Change)
				projections = append(projections, f)
				if foundIDs == nil {
					foundIDs = map[string][]string{}
				}
				foundIDs[v.UserID] = append(foundIDs[v.UserID], f.Change.Cause.EventID)
			}
			if again {
				e := causeEntry
				// Written by an earlier attempt that may not have published,
				// nor stored the user's timer: the flip is looked for from
				// that attempt's instant, as one that passed since would
				// otherwise be neither applied here nor scheduled. Past, it
				// fires at the next round.
				c := changeOf(org, v.UserID, seg, e, cause)
				retried = append(retried, len(changes))
				changes = append(changes, c)
				projections = append(projections, membership.Projection{Change: c, Rev: e.Rev})
				if at, ok := flipSince(p.cs.Rule, v, time.UnixMilli(e.AtMillis)); ok {
					if p.flipFound != nil {
						p.flipFound(v.UserID, at)
					} else {
						due = append(due, membership.Due{OrgID: org, UserID: v.UserID, At: at})
					}
				}
				continue
			}
			if r.unreadable != nil {
				// As the stream dead-letters its events (see viewUsers).
				j.cfg.Logger.Warn("user skipped: its stored profile cannot be decoded", "org", org, "segment", seg, "err", r.unreadable)
				continue
			}
			if v.Profile == "" || (r.match == v.Member && !earlier) {
				continue
			}
			amends = append(amends, membership.Amend{OrgID: org, UserID: v.UserID, SegmentID: seg, ExpectRev: v.Rev, Entered: r.match,
				Entry: membership.OutboxEntry{EventID: cause.EventID, CauseType: cause.Type, AtMillis: now.UnixMilli(), Rev: v.Rev + 1,
					Changes: []membership.OutboxChange{{SegmentID: seg, Entered: r.match}}}})
		}
		var changed error
		if p.flipFound != nil && len(amends) > 0 {
			// A timer round decided with the definitions it started with,
			// which the revision gate does not wait for: paused past it (see
			// Registry.Fresh), the round stops before writing, and its claim
			// is taken up again after its lease, with the definitions in force.
			cur, err := j.cfg.Registry.Fresh(ctx)
			if err != nil {
				return err
			}
			if o := cur.Org(org); o == nil || o.Segments[seg] == nil || o.Segments[seg].Def.Generation != p.cs.Def.Generation {
				// Nothing decided here is written; what earlier attempts
				// wrote, found above in the users' outboxes, is published
				// all the same: the round ends those users' claims, and
				// nothing else looks for the entries of finished claims.
				changed = fmt.Errorf("segment %s/%s: %w", org, seg, errChangedWhileDeciding)
				amends = nil
			}
		}
		outcomes, err := j.cfg.Users.Amend(ctx, amends)
		if err != nil {
			return err
		}
		pending = nil
		for i, a := range amends {
			switch outcomes[i].Result {
			case membership.AmendStale:
				pending = append(pending, a.UserID)
				continue
			case membership.AmendUnchanged:
				continue
			}
			// A change of the segment that a write just before this one
			// decided (the stream's, another job's) may not be published
			// yet: published after this one, it would leave a consumer
			// following the topic with the older change. It goes first,
			// again with its eventId when it was published.
			// Projected too (the newer write's projection wins all the
			// same): changes and projections go index by index.
			own := append(slices.Clip(foundIDs[a.UserID]), a.Entry.EventID) // published here already
			skip := func(e membership.OutboxEntry) bool { return slices.Contains(own, e.EventID) }
			only := func(s string) bool { return s == seg }
			ref := membership.UserRef{OrgID: org, UserID: a.UserID}
			raced := racedChanges(ref, outcomes[i].Before, func(e membership.OutboxEntry) bool {
				return skip(e) || p.rules.backfillPublished(e)
			}, only, now)
			// The decision this one flips from may be older and still
			// unpublished (see precedingChanges).
			if pcs := precedingChanges(ref, outcomes[i].Before, seg, a.Entry.Rev, a.Entered, unpublished.take(outcomes[i].Applied, skip)); len(pcs) > 0 {
				raced = withoutRepeats(append(raced, pcs...))
				slices.SortStableFunc(raced, func(a, b membership.Projection) int { return cmp.Compare(a.Rev, b.Rev) })
			}
			for _, r := range raced {
				changes = append(changes, r.Change)
				projections = append(projections, r)
			}
			c := changeOf(org, a.UserID, seg, a.Entry, p.causeOf(a.UserID))
			changes = append(changes, c)
			projections = append(projections, membership.Projection{Change: c, Rev: a.Entry.Rev})
		}
		if len(retried) > 0 {
			dctx := ctx
			if p.afterWrite != nil {
				dctx = p.afterWrite
			}
			if changes, projections, err = j.dropSuperseded(dctx, changes, projections, retried); err != nil {
				return err
			}
		}
		// The amends are written: what they decided is projected and
		// published here (or by the caller of later, before it lets go of
		// its revision), through failures that pass (see settle). Left to
		// a later attempt, it would wait for one that a deletion may never
		// let come (a deleted segment's timers and backfills stop): the
		// deletion, whose gate waits while this round holds its revision,
		// would remove the members without the exits decided here.
		if p.later != nil {
			p.later.add(changes, projections, due)
		} else if err := j.settleChanges(ctx, seg, changes, projections, due, false); err != nil {
			return err
		}
		if changed != nil {
			return changed
		}
	}
	return nil
}

// dropSuperseded leaves out of changes (and of projections, index by
// index) the earlier attempts' changes at retried that a later write of
// the user, not published with them here, already decided again for their
// segment (see superseded): the attempt died before publishing them.
// A later write whose change goes out here, after them, keeps them: the
// two then come in their order.
func (j *Jobs) dropSuperseded(ctx context.Context, changes []events.Change, projections []membership.Projection, retried []int) ([]events.Change, []membership.Projection, error) {
	revs := make([]int64, len(projections))
	for i, p := range projections {
		revs[i] = p.Rev
	}
	drop, err := superseded(ctx, j.cfg.Users, changes, revs, retried)
	if err != nil {
		return nil, nil, err
	}
	return without(changes, drop), without(projections, drop), nil
}

// settleChanges projects and publishes changes already written, leaving
// out those a deletion answered (see Deletions.Published), then stores
// due, through failures that pass (see settle). With mark (a timer
// round's), it then marks the published entries of jobs as such (after
// due is stored, which a flip's timer needs, and a mark does not), so that
// the user's next writers do not publish them again (see
// membership.LastDecisions and racedChanges): a timer's change is most often followed by one of
// the stream (a user active again), which would otherwise publish it
// again, and again at each later flip while the entry stays in the
// outbox (a day). Backfills leave their entries unmarked: a mark costs a
// Redis call per entry marked, on their path every entering user's.
func (j *Jobs) settleChanges(ctx context.Context, seg string, changes []events.Change, projections []membership.Projection, due []membership.Due, mark bool) error {
	published, whole := false, false
	err := j.settle(ctx, seg, len(changes), func(ctx context.Context) error {
		if !published {
			deleted, err := j.cfg.Users.Project(ctx, projections)
			if err != nil {
				return err
			}
			out := changes
			if len(deleted) > 0 {
				out = deleted.Published(changes, func(i int) int64 { return projections[i].Rev })
			}
			if err := j.cfg.Publisher.Publish(ctx, out); err != nil {
				return err
			}
			published, whole = true, len(deleted) == 0
			j.cfg.Metrics.countChanges(out)
		}
		return j.cfg.Schedules.Schedule(ctx, due)
	})
	if err == nil && mark && whole {
		j.markPublished(ctx, projections)
	}
	return err
}

// markPublished marks the job entries whose changes ps hold published. A
// mark that fails costs repeats only: it is not retried.
func (j *Jobs) markPublished(ctx context.Context, ps []membership.Projection) {
	var marks []membership.Published
	seen := make(map[membership.Published]bool, len(ps))
	for _, p := range ps {
		c := p.Change
		m := membership.Published{OrgID: c.OrgID, UserID: c.UserID, Rev: p.Rev}
		if (c.Cause.Type == events.CauseTime || c.Cause.Type == events.CauseSegment) && !seen[m] {
			seen[m] = true
			marks = append(marks, m)
		}
	}
	if len(marks) == 0 {
		return
	}
	if err := j.cfg.Users.MarkPublished(ctx, marks); err != nil && ctx.Err() == nil {
		j.cfg.Logger.Warn("published entries not marked as such: the users' next writers publish them again", "entries", len(marks), "err", err)
	}
}

// stillChanging reports the users whose compare-and-set lost to their
// other writes in every round of an amendPage; the changes of every other
// user of the page are written and published.
type stillChanging struct {
	seg   string
	users []string
}

func (e *stillChanging) Error() string {
	return fmt.Sprintf("%d users kept changing while segment %s was re-evaluated", len(e.users), e.seg)
}

// settleLimit bounds settle: as long as a timer's claim, and as the gate
// of a definitions change waits. A job that holds its revision longer holds
// back every organisation's deletions and backfills on this instance (and
// its other organisations' timers), for a failure that may be of one
// Redis node or Kafka partition only.
const settleLimit = 30 * time.Second

// settle retries op, the projection and publication of amends already
// written, until it succeeds, ctx ends (the instance stops, or a
// backfill's lease is lost) or settleLimit passes. Another attempt then
// publishes the same changes from the outboxes, unless the segment was
// deleted meanwhile (README, known limits).
func (j *Jobs) settle(ctx context.Context, seg string, n int, op func(context.Context) error) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 100*time.Millisecond, 5*time.Second, settleLimit
	attempt := 0
	return backoff.Retry(func() error {
		attempt++
		err := op(ctx)
		if err != nil && ctx.Err() == nil {
			j.cfg.Logger.Warn("changes written, not yet published; retrying", "segment", seg, "changes", n, "attempt", attempt, "err", err)
		}
		return err
	}, backoff.WithContext(bo, ctx))
}

// viewUsers reads users as seen for seg, taking their membership from
// known when it is not nil rather than from their segment sets. A user
// whose stored state cannot be read is left as it is (its view has no
// profile), with a warning: the stream dead-letters its events likewise.
func (j *Jobs) viewUsers(ctx context.Context, org, seg string, users []string, known map[string]bool, outbox bool) ([]membership.SegmentView, error) {
	f := membership.ViewFields{Segment: seg, Outbox: outbox}
	if known != nil {
		f.Segment = ""
	}
	views, err := j.cfg.Users.ViewUsers(ctx, org, users, f)
	for i := range views {
		if views[i].Unreadable != nil {
			j.cfg.Logger.Warn("user skipped", "segment", seg, "err", views[i].Unreadable)
		} else if known != nil {
			views[i].Member = known[views[i].UserID]
		}
	}
	return views, err
}

type viewResult struct {
	match bool
	flip  *time.Time
	// unreadable, when not nil, says why the stored profile could not be
	// decoded: the user is then left as it is.
	unreadable error
}

// evaluateViews decodes and evaluates the profiles on every core: decoding
// is most of a backfill's CPU in Go.
func evaluateViews(rule *segment.Rule, views []membership.SegmentView, now time.Time) []viewResult {
	out := make([]viewResult, len(views))
	keys := rule.ProfileKeys()
	parallel(len(views), func(i int) {
		if views[i].Profile == "" {
			return
		}
		p, err := segment.DecodeUserProfile(views[i].Profile, keys, views[i].UserID)
		if err != nil {
			out[i].unreadable = err
			return
		}
		out[i].match = rule.Match(p, now)
		if rule.TimeDependent() {
			if at, ok := rule.NextFlip(p, now); ok {
				out[i].flip = &at
			}
		}
	})
	return out
}

// flipSince returns the first instant after since at which the rule's
// verdict on the stored profile changes.
func flipSince(rule *segment.Rule, v membership.SegmentView, since time.Time) (time.Time, bool) {
	if v.Profile == "" || !rule.TimeDependent() {
		return time.Time{}, false
	}
	p, err := segment.DecodeUserProfile(v.Profile, rule.ProfileKeys(), v.UserID)
	if err != nil {
		return time.Time{}, false
	}
	return rule.NextFlip(p, since)
}

func findEntry(outbox []membership.OutboxEntry, eventID, seg string) (membership.OutboxEntry, bool) {
	for _, e := range outbox {
		if e.EventID == eventID && len(e.Changes) == 1 && e.Changes[0].SegmentID == seg {
			return e, true
		}
	}
	return membership.OutboxEntry{}, false
}

func changeOf(org, user, seg string, e membership.OutboxEntry, cause events.Cause) events.Change {
	return events.Change{OrgID: org, SegmentID: seg, UserID: user, Entered: e.Changes[0].Entered,
		At: time.UnixMilli(e.AtMillis).UTC(), Cause: cause}
}

// fireTimers claims the due timers of every organisation with
// time-relative segments, re-evaluates those users against exactly those
// segments, and moves each timer to the user's next flip.
func (j *Jobs) fireTimers(ctx context.Context) {
	first := j.cfg.Registry.Current()
	if first == nil {
		return
	}
	// A round's amends are decided with snap's definitions: a deletion's
	// revision gate waits for the round to end. The revision is held
	// before the snapshot used is read, so that the one held is never
	// newer than the definitions the round applies.
	defer j.releaseRevision(j.holdRevision(first.Revision, "", nil))
	snap := j.cfg.Registry.Current()
	var (
		mu       sync.Mutex
		lag      time.Duration
		measured = true
		wg       sync.WaitGroup
		slots    = make(chan struct{}, timerOrgsAtOnce)
	)
	silent := j.silentOwners(ctx)
	for org, o := range snap.Orgs {
		if !o.TimeDependent() {
			continue
		}
		// Organisations' rounds go side by side: a round waits on Redis and
		// Kafka most of its time, and one organisation's flips should not
		// wait for another's.
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			at, due, err := j.fireOrgRounds(ctx, org, o, silent)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				measured = false
			case due:
				lag = max(lag, at)
			}
		}()
	}
	wg.Wait()
	if measured {
		j.timerLag.Set(lag.Seconds())
	}
}

// timerOrgsAtOnce bounds the organisations whose timer rounds run at once.
const timerOrgsAtOnce = 4

// fireOrgRounds fires org's due timers in rounds, and returns how late the
// oldest flip the rounds left is, if any is (an error when that could not
// be read).
func (j *Jobs) fireOrgRounds(ctx context.Context, org string, o *OrgRules, silent []string) (time.Duration, bool, error) {
	if len(silent) > 0 {
		// Their claims fire in this round, rather than when their leases
		// end, up to 30 s after the instance died.
		n, err := j.cfg.Schedules.TakeOver(ctx, org, silent, j.cfg.Now())
		if err != nil {
			j.cfg.Logger.Warn("take over timers", "org", org, "err", err)
		} else if n > 0 {
			j.takenOver.Add(float64(n))
			j.cfg.Logger.Info("timers of instances that stopped beating taken over", "org", org, "timers", n, "instances", silent)
		}
	}
	// Claims go in rounds until no timer is left due or the rounds took
	// the timer interval, so that many flips at one instant (a batch of
	// profiles imported together) still fire within seconds.
	start := time.Now()
	for {
		// Each round's clock is its own: its claims' leases run from it.
		n, err := j.fireOrgTimers(ctx, org, o, j.cfg.Now())
		if err != nil {
			j.cfg.Logger.Warn("fire timers", "org", org, "err", err)
			break
		}
		if n < timerClaimLimit || time.Since(start) >= j.cfg.TimerInterval || ctx.Err() != nil {
			break
		}
	}
	// What the rounds left due: sustained flips faster than the rounds
	// fire them show here first.
	now := j.cfg.Now()
	at, due, err := j.cfg.Schedules.OldestDue(ctx, org, now)
	if err != nil || !due {
		return 0, false, err
	}
	return now.Sub(at), true, nil
}

// seenBeat is another instance's beat as last read, and since when.
type seenBeat struct {
	value string
	since time.Time
}

// silentOwners returns the other instances whose beat has not changed for
// j.silence, as this instance saw it (its own clock: instances' clocks need
// not agree, and a beat's value changes with every beat), and whose timer
// claims it takes over: nil when there are none, or when the beats cannot
// be read (their leases then end as they would). An instance stays named
// until its claims' leases, taken before its last beat, have ended.
func (j *Jobs) silentOwners(ctx context.Context) []string {
	beats, err := j.cfg.Coordinator.Beats(ctx)
	if err != nil {
		j.cfg.Logger.Warn("instances' beats", "err", err)
		return nil
	}
	now := time.Now()
	j.beatsMu.Lock()
	defer j.beatsMu.Unlock()
	// After a gap in this instance's reads (Redis failing or slow, which
	// holds the others' beats back too), a beat not moved since the read
	// before says nothing: the count starts again.
	gap := !j.beatsRead.IsZero() && now.Sub(j.beatsRead) >= j.beatsGap
	j.beatsRead = now
	var silent []string
	for id, v := range beats {
		seen, ok := j.beatsSeen[id]
		switch {
		case id == j.cfg.InstanceID:
		case !ok || seen.value != v || gap:
			j.beatsSeen[id] = seenBeat{value: v, since: now}
		case now.Sub(seen.since) >= j.silence && now.Sub(seen.since) < j.silence+timerLease:
			silent = append(silent, id)
		}
	}
	maps.DeleteFunc(j.beatsSeen, func(id string, _ seenBeat) bool { _, ok := beats[id]; return !ok })
	return silent
}

// timerLease is how long a timer claim holds its timers: a round is
// bounded well under it (roundFinishLimit), so another instance takes them
// only after their claimer died, froze or lost Redis, or once it is seen
// silent (claimOwnerSilence).
const timerLease = 30 * time.Second

// claimOwnerSilence is how long an instance's beat (every 250 ms) may stay
// the same before its timer claims are taken over: twelve beats missed.
const claimOwnerSilence = 3 * time.Second

// beatReadGap: reads of the beats (one a timer tick, each second) this far
// apart restart the count of every silence.
const beatReadGap = 3 * time.Second

// errChangedWhileDeciding is a timer pass that found its segment changed
// (or deleted) after the round read the definitions, before it wrote.
var errChangedWhileDeciding = errors.New("changed while a timer round was deciding")

// roundFinishLimit bounds a round of timers that goes on after its
// instance was told to stop.
const roundFinishLimit = 8 * time.Second

// roundSettleShare: a round's passes have its time but 1/roundSettleShare
// of it, kept for settling what they wrote.
const roundSettleShare = 4

// timerClaimLimit is how many timers of an organisation one round claims.
const timerClaimLimit = 2000

// fireOrgTimers claims up to timerClaimLimit due timers of org and fires
// them; it returns how many it claimed. Timers of a round that fails stay
// claimed: their leases run out and they fire again.
func (j *Jobs) fireOrgTimers(ctx context.Context, org string, o *OrgRules, now time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// A round once begun is finished even when the instance is told to
	// stop: cut between its claim and Done, its claims would stay under
	// their lease and fire again 30 s later, publishing what it published
	// a second time (after an orderly stop, not a crash), and a claim cut
	// after Redis ran it would put its flips off by the lease. Bounded
	// below the 10 s the process waits for its jobs.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), j.roundLimit)
	defer cancel()
	claimed, err := j.cfg.Schedules.Claim(ctx, org, j.cfg.InstanceID, now, timerLease, timerClaimLimit)
	if err != nil || len(claimed) == 0 {
		return 0, err
	}
	byUser := make(map[string]membership.Claimed, len(claimed))
	users := make([]string, 0, len(claimed))
	for _, c := range claimed {
		byUser[c.UserID] = c
		users = append(users, c.UserID)
	}
	// The earliest flip each user's entries found give, which Done keeps
	// if it comes before the user's next one from now.
	found := map[string]time.Time{}
	stuck := map[string]bool{}
	flipFound := func(user string, at time.Time) {
		if cur, ok := found[user]; !ok || at.Before(cur) {
			found[user] = at
		}
	}
	// One read of every claimed user decides which segments' passes each
	// one needs: a pass reads and evaluates its users again, so a round over
	// every time-relative segment for every user would cost a read per
	// segment and user, most of them finding nothing to change.
	pending, err := j.timerPasses(ctx, org, o, byUser, users)
	if err != nil {
		return 0, err
	}
	// The passes' writes are settled together once they all wrote (or one
	// failed: what the others wrote goes out all the same). The passes stop
	// short of the round's end, so that passes running out of time (a slow
	// Redis) leave the settlement the rest of it: settled with the round's
	// time spent, what they wrote would wait for the claims' lease. The
	// share is counted back from the round's end, not on from the passes'
	// start: the claim and the read before the passes, as slow as the
	// passes on a slow Redis, would otherwise eat into it.
	var later settlement
	roundEnd, _ := ctx.Deadline()
	passCtx, stopPasses := context.WithDeadline(ctx, roundEnd.Add(-j.roundLimit/roundSettleShare))
	defer stopPasses()
	var passErr error
	for _, id := range o.TimeIDs {
		if len(pending[id]) == 0 {
			continue
		}
		causeOf := func(user string) events.Cause { return timeCause(id, byUser[user].At) }
		earlier := func(user string) []events.Cause {
			var out []events.Cause
			for _, at := range byUser[user].Earlier {
				out = append(out, timeCause(id, at))
			}
			return out
		}
		err := j.amendPage(passCtx, amendPass{org: org, cs: o.Segments[id], causeOf: causeOf, earlier: earlier, retry: true, flipFound: flipFound, later: &later, afterWrite: ctx, rules: o}, pending[id])
		var sc *stillChanging
		if errors.As(err, &sc) {
			// Their claims stay, to be retried after the lease, as a
			// failed round's; the round goes on for the others.
			j.cfg.Logger.Warn("timers put off: users kept changing", "org", org, "segment", id, "users", len(sc.users))
			for _, u := range sc.users {
				stuck[u] = true
			}
		} else if errors.Is(err, errChangedWhileDeciding) {
			// The pass wrote nothing of its own (what earlier attempts
			// wrote, found in its users' outboxes, is in later): the new
			// criteria's backfill evaluates (and schedules) every user of
			// the segment. The other segments' flips go on now rather than
			// after the claims' lease.
			j.cfg.Logger.Info("timer pass skipped: the segment changed", "org", org, "segment", id)
		} else if err != nil {
			passErr = fmt.Errorf("segment %s: %w", id, err)
			break
		}
	}
	// What the passes wrote goes out even when one failed.
	if err := j.settleChanges(ctx, "", later.changes, later.projections, later.due, true); err != nil {
		if passErr == nil {
			return 0, err
		}
		j.cfg.Logger.Warn("timer round: written changes left to the claims' retry", "org", org, "changes", len(later.changes), "err", err)
	}
	if passErr != nil {
		return 0, passErr
	}
	if len(stuck) > 0 {
		users = slices.DeleteFunc(users, func(u string) bool { return stuck[u] })
	}
	views, err := j.cfg.Users.ViewUsers(ctx, org, users, membership.ViewFields{Outbox: true})
	if err != nil {
		return 0, err
	}
	if changes, projections, retried := orphanTimerChanges(org, o, byUser, views, j.cfg.Now(), j.unpublished(ctx, j.cfg.Now())); len(changes) > 0 {
		// Earlier attempts' changes, as a pass's: one a later write
		// decided again is left out (see dropSuperseded).
		changes, projections, err := j.dropSuperseded(ctx, changes, projections, retried)
		if err != nil {
			return 0, err
		}
		if err := j.settleChanges(ctx, "", changes, projections, nil, true); err != nil {
			return 0, err
		}
	}
	done := make([]membership.Claimed, 0, len(views))
	next := make([]time.Time, 0, len(views))
	for _, v := range views {
		var at time.Time
		if v.Unreadable != nil {
			// Kept for later, not dropped: once the key is repaired the
			// user's flips must still fire.
			j.cfg.Logger.Warn("timer put off: user unreadable", "err", v.Unreadable)
			at = now.Add(unreadableRetry)
		} else if v.Profile != "" {
			if p, err := segment.DecodeUserProfile(v.Profile, nil, v.UserID); err == nil {
				at, _ = o.NextFlip(p, now)
			} else {
				j.cfg.Logger.Warn("timer put off: stored profile cannot be decoded", "org", org, "err", err)
				at = now.Add(unreadableRetry)
			}
			if f, ok := found[v.UserID]; ok && (at.IsZero() || f.Before(at)) {
				at = f // past, it fires at the next round
			}
		}
		done = append(done, byUser[v.UserID])
		next = append(next, at)
	}
	if err := j.cfg.Schedules.Done(ctx, done, next); err != nil {
		return 0, err
	}
	j.timers.Add(float64(len(claimed)))
	return len(claimed), nil
}

// timerPasses returns, for each time-relative segment of o, the claimed
// users its pass must look at: those whose membership the rule, applied at
// an instant after one read of them, contradicts, those whose outbox holds
// an entry under one of the claim's flips for the segment (an unfinished
// attempt's, to publish), and those the read could not judge. A user left
// out whose verdict changes after the read is not lost: Done moves its
// timer to the user's next flip from the claim's instant, which that
// change is, and the next round fires it.
func (j *Jobs) timerPasses(ctx context.Context, org string, o *OrgRules, byUser map[string]membership.Claimed, users []string) (map[string][]string, error) {
	views, err := j.cfg.Users.ViewUsers(ctx, org, users, membership.ViewFields{Outbox: true})
	if err != nil {
		return nil, err
	}
	out := make(map[string][]string, len(o.TimeIDs))
	sets, err := j.cfg.Users.UserSegmentSets(ctx, org, users)
	if err != nil {
		// One user's segment set of another type (written by hand) fails
		// the whole read: every pass then looks at every user, and reads
		// each user's membership itself, which leaves that user alone as
		// unreadable rather than hold up the organisation's timers.
		j.cfg.Logger.Warn("timer round: segment sets unread; every pass looks at every user", "org", org, "err", err)
		for _, id := range o.TimeIDs {
			out[id] = users
		}
		return out, nil
	}
	now := j.cfg.Now()
	for i, v := range views {
		var p *segment.Profile
		if v.Unreadable == nil && v.Profile != "" {
			if p, err = segment.DecodeUserProfile(v.Profile, nil, v.UserID); err != nil {
				p = nil
			}
		}
		c := byUser[v.UserID]
		unjudged := v.Unreadable != nil || (v.Profile != "" && p == nil)
		for _, id := range o.TimeIDs {
			need := unjudged
			if !need && p != nil {
				need = o.Segments[id].Rule.Match(p, now) != slices.Contains(sets[i], id)
			}
			if !need {
				for _, e := range v.Outbox {
					if e.CauseType != events.CauseTime || len(e.Changes) != 1 || e.Changes[0].SegmentID != id {
						continue
					}
					if e.EventID == timeCause(id, c.At).EventID || slices.ContainsFunc(c.Earlier, func(at time.Time) bool { return e.EventID == timeCause(id, at).EventID }) {
						need = true
						break
					}
				}
			}
			if need {
				out[id] = append(out[id], v.UserID)
			}
		}
	}
	return out, nil
}

// orphanTimerChanges finds the changes that earlier claims of the users'
// timers wrote for segments no longer time-relative (their criteria
// changed since), which no pass of a round looks for: their entries are
// published again with their eventIds, so that one whose round failed
// before publishing it is not lost. (A criteria change's backfill looks
// for them too, for an organisation left with no relative date, whose
// timers no round claims.) Each goes after the decision it flips from,
// when that may be unpublished (see precedingChanges).
// It returns, with the changes and their projections, the indexes of the
// earlier claims' changes among them.
func orphanTimerChanges(org string, o *OrgRules, byUser map[string]membership.Claimed, views []membership.SegmentView, now time.Time, unpublished unpublishedStream) ([]events.Change, []membership.Projection, []int) {
	unpublished.rules = o
	var changes []events.Change
	var projections []membership.Projection
	var retried []int
	for _, v := range views {
		if len(v.Outbox) == 0 {
			continue
		}
		c := byUser[v.UserID]
		flips := append([]time.Time{c.At}, c.Earlier...)
		for _, e := range v.Outbox {
			if e.CauseType != events.CauseTime || len(e.Changes) != 1 {
				continue
			}
			// A deleted segment's are not: its deletion answered its members
			// (README, known limits), and its keys may be gone by now.
			seg := e.Changes[0].SegmentID
			if _, inForce := o.Segments[seg]; !inForce || slices.Contains(o.TimeIDs, seg) {
				continue
			}
			for _, at := range flips {
				if cause := timeCause(seg, at); cause.EventID == e.EventID {
					ch := changeOf(org, v.UserID, seg, e, cause)
					for _, pc := range precedingChanges(membership.UserRef{OrgID: org, UserID: v.UserID}, v.Outbox, seg, e.Rev, ch.Entered, unpublished.take(v.Applied, func(p membership.OutboxEntry) bool {
						return p.EventID == e.EventID
					})) {
						changes = append(changes, pc.Change)
						projections = append(projections, pc)
					}
					retried = append(retried, len(changes))
					changes = append(changes, ch)
					projections = append(projections, membership.Projection{Change: ch, Rev: e.Rev})
					break
				}
			}
		}
	}
	return changes, projections, retried
}

// deletionsLock hands the search for unfinished deletions to one instance
// a minute.
const deletionsLock = "deletions"

// finishDeletions completes the deletions that their DELETE request left
// undone (the instance stopped, Redis or Kafka failed, the revision gate
// timed out) and that no retry finished within DeletionGrace: the segment
// is hidden from the API and from evaluation, but its members stay in the
// public sets until the removal runs. It runs the request's sequence:
// every instance stops evaluating the segment, the members go with their
// exits published, then the definition.
func (j *Jobs) finishDeletions(ctx context.Context) {
	owner := j.cfg.InstanceID + fmt.Sprint(j.cfg.Now().UnixNano())
	// Not released: one search a minute, on whichever instance comes first.
	ok, err := j.cfg.Coordinator.TryLock(ctx, deletionsLock, owner, 50*time.Second)
	if err != nil || !ok {
		if err != nil {
			j.cfg.Logger.Warn("finish deletions", "err", err)
		}
		return
	}
	defs, err := j.cfg.Definitions.Deleting(ctx)
	if err != nil {
		j.cfg.Logger.Warn("finish deletions", "err", err)
		return
	}
	for _, d := range defs {
		if j.cfg.Now().Sub(d.UpdatedAt) < j.cfg.DeletionGrace {
			continue
		}
		if err := j.finishDeletion(ctx, d, owner); err != nil {
			j.cfg.Logger.Warn("finish a deletion; retried in a minute", "org", d.OrgID, "segment", d.ID, "err", err)
			continue
		}
		j.cfg.Logger.Info("finished a deletion left undone", "org", d.OrgID, "segment", d.ID)
	}
	// A static create that stopped part way (its instance died) left a
	// segment with part of its list, each listed user's entry published.
	// Past the time in which a retry of a keyed create takes it over, it is
	// rolled back as a deletion: its members leave, with their exits.
	creates, err := j.cfg.Definitions.UnfinishedCreates(ctx)
	if err != nil {
		j.cfg.Logger.Warn("finish deletions", "err", err)
		return
	}
	for _, d := range creates {
		if j.cfg.Now().Sub(d.CreatedAt) < unfinishedCreateGrace {
			continue
		}
		_, err := j.cfg.Definitions.AbandonCreate(ctx, d.OrgID, d.ID)
		if errors.Is(err, membership.ErrCreateFinished) || errors.Is(err, membership.ErrNotFound) {
			continue
		}
		if err == nil {
			// As listed, unfinished: the removal also looks past the
			// member set.
			err = j.finishDeletion(ctx, d, owner)
		}
		if err != nil {
			j.cfg.Logger.Warn("roll back a static create left unfinished; retried in a minute", "org", d.OrgID, "segment", d.ID, "err", err)
			continue
		}
		j.cfg.Logger.Info("rolled back a static create left unfinished", "org", d.OrgID, "segment", d.ID)
	}
}

// unfinishedCreateGrace is how long after its creation a static segment
// whose list was never written in full is left for a retry of its create
// (one made with an Idempotency-Key takes it over once the API's ~6-minute
// lease of the create has run out) before the jobs roll it back.
const unfinishedCreateGrace = 20 * time.Minute

// finishDeletion removes a segment marked deleting, as a DELETE does: d is
// the definition as read before the mark. Where a DELETE waits for the
// list's lock, it gives up at once: a request's removal in progress, or a
// change of the list, ends first, and the next search a minute later
// finds the segment again if it is still there.
func (j *Jobs) finishDeletion(ctx context.Context, d segment.Definition, owner string) error {
	lock := func(ctx context.Context, org, id string) (context.Context, func(), error) {
		name := membership.ListLock(org, id)
		unlock := func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = j.cfg.Coordinator.Unlock(uctx, name, owner)
		}
		ok, err := j.cfg.Coordinator.TryLock(ctx, name, owner, membership.ListLockTTL)
		if err != nil {
			unlock() // it may have been taken all the same (a lost reply)
			return ctx, nil, err
		}
		if !ok {
			return ctx, nil, errors.New("its list is locked by a request")
		}
		ctx, stopLease := membership.KeepLease(ctx, j.cfg.Coordinator, name, owner, membership.ListLockTTL)
		return ctx, func() { stopLease(); unlock() }, nil
	}
	publish := func(ctx context.Context, cs []events.Change) error {
		if err := j.cfg.Publisher.Publish(ctx, cs); err != nil {
			return err
		}
		j.cfg.Metrics.countChanges(cs)
		return nil
	}
	gate := NewRevisionGate(j.cfg.Coordinator, j.cfg.Now)
	return SegmentDeletion{Definitions: j.cfg.Definitions, Remover: j.cfg.Remover, Await: gate.Wait, Lock: lock, Publish: publish,
		Now: j.cfg.Now}.Remove(ctx, d, time.Time{})
}

// estimateTick is how often the estimate refresh looks for organisations
// whose lease has run out: at most a minute, and a whole fraction of the
// interval (a minute's tick would find the lease of a 90 s interval still
// held at 60 s, and refresh at 120 s).
func estimateTick(interval time.Duration) time.Duration {
	n := (interval + time.Minute - 1) / time.Minute
	return interval / max(n, 1)
}

// estimateLease is how long one refresh of an organisation holds off the
// next: the interval less a tenth of a tick, so that the tick one interval
// on finds it gone (a lease of exactly the interval outlives that tick by
// the time the refresh took to reach the organisation, and the refresh
// came every other interval).
func estimateLease(interval time.Duration) time.Duration {
	return interval - estimateTick(interval)/10
}

// refreshEstimates copies each segment's exact size into estimatedSize,
// once per interval and organisation across all instances. An instance
// reads the definitions of the organisations whose refresh it wins only.
func (j *Jobs) refreshEstimates(ctx context.Context) {
	orgs, err := j.cfg.Definitions.Orgs(ctx)
	if err != nil {
		j.cfg.Logger.Warn("refresh estimates", "err", err)
		return
	}
	owner := j.cfg.InstanceID + fmt.Sprint(j.cfg.Now().UnixNano())
	for _, org := range orgs {
		// The lease is released only when the refresh fails, and a fresh
		// owner each time means no one extends it: it lets one refresh of
		// the organisation through per interval, on whichever instance
		// comes first.
		// The interval is in the lease's name: a lease left by instances
		// of a longer interval (before SEGMENTD_ESTIMATE_INTERVAL was
		// lowered) must not hold this one's refreshes back for its length.
		lease := "estimates:" + strconv.FormatInt(j.cfg.EstimateInterval.Milliseconds(), 10) + ":" + org
		ok, err := j.cfg.Coordinator.TryLock(ctx, lease, owner, estimateLease(j.cfg.EstimateInterval))
		if err != nil || !ok {
			continue
		}
		// A refresh that fails gives its lease back, so that the next tick
		// (of any instance) tries again rather than a whole interval later.
		failed := func(err error) {
			if ctx.Err() != nil {
				return // stopping: the lease runs out by itself
			}
			j.cfg.Logger.Warn("refresh estimates", "org", org, "err", err)
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			_ = j.cfg.Coordinator.Unlock(uctx, lease, owner)
		}
		defs, err := j.cfg.Definitions.OrgDefinitions(ctx, org)
		if err != nil {
			failed(err)
			continue
		}
		if len(defs) == 0 {
			continue
		}
		sizes, err := j.settledSizes(ctx, org, defs)
		if err != nil {
			failed(err)
			continue
		}
		generation := make(map[string]int64, len(defs))
		for _, d := range defs {
			generation[d.ID] = d.Generation
		}
		var errs []error
		for id, n := range sizes {
			// One deleted meanwhile needs no estimate; one whose rebuild
			// began meanwhile keeps the estimate it had.
			if err := j.cfg.Definitions.SetEstimatedSize(ctx, org, id, generation[id], n); err != nil && !errors.Is(err, membership.ErrNotFound) {
				errs = append(errs, fmt.Errorf("segment %s: %w", id, err))
			}
		}
		if len(errs) > 0 {
			failed(errors.Join(errs...))
		}
	}
}

// settledSizes returns the sizes of the segments among defs whose member
// set is settled: a segment being built holds part of its membership, and
// a static list being changed (its lease held) holds both lists at once
// for a moment (a replacement adds before it removes). Those keep their
// estimate until the next refresh rather than record a size the segment
// never had for an interval. A list whose change starts while the sizes
// are read is caught by reading the leases again after them.
func (j *Jobs) settledSizes(ctx context.Context, org string, defs []segment.Definition) (map[string]int64, error) {
	ids := make([]string, 0, len(defs))
	var lists, locks []string
	for _, d := range defs {
		if d.Status == segment.StatusBuilding {
			continue
		}
		ids = append(ids, d.ID)
		if d.Type == segment.TypeStatic {
			lists = append(lists, d.ID)
			locks = append(locks, membership.ListLock(org, d.ID))
		}
	}
	busy := map[string]bool{}
	held := func() error {
		h, err := j.cfg.Coordinator.Held(ctx, locks)
		for i, b := range h {
			if b {
				busy[lists[i]] = true
			}
		}
		return err
	}
	if err := held(); err != nil {
		return nil, err
	}
	ids = slices.DeleteFunc(ids, func(id string) bool { return busy[id] })
	if len(ids) == 0 {
		return nil, nil
	}
	sizes, err := j.cfg.Sizes.Sizes(ctx, org, ids)
	if err != nil {
		return nil, err
	}
	if err := held(); err != nil {
		return nil, err
	}
	for id := range busy {
		delete(sizes, id)
	}
	return sizes, nil
}
