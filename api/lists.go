package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// A static segment's list is changed by one request at a time, across
// instances, and never beside its deletion: a change planned from the
// members read before another's write would undo it, two adds could pass
// the size limit together, and a write that ran on after a deletion had
// removed the members would leave the deleted segment in users' sets.

// listLockWait is how long a request waits for another's change of the
// same list before answering 409: longer than the lease of a holder that
// died lasts, so that a retry after a killed instance goes through.
const listLockWait = membership.ListLockTTL + 5*time.Second

// errListBusy reports a list lock held by another request.
var errListBusy = errors.New("list locked")

// lockList takes the lock of the list of segment seg of org, waiting for a
// change in progress, and returns the context to work under while holding
// it and the lock's release. The lock is renewed while held, so that one
// whose holder died frees the list within membership.ListLockTTL; the
// context ends if a renewal finds it lost. Without Locks it locks nothing.
func (s *Server) lockList(ctx context.Context, org, seg string) (context.Context, func(), error) {
	if s.locks == nil {
		return ctx, func() {}, nil
	}
	var b [12]byte
	_, _ = rand.Read(b[:])
	owner, name := hex.EncodeToString(b[:]), membership.ListLock(org, seg)
	take := func() error {
		ok, err := s.locks.TryLock(ctx, name, owner, membership.ListLockTTL)
		switch {
		case err != nil:
			// The lock may have been taken all the same (a lost reply):
			// give it back rather than hold it until its TTL.
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = s.locks.Unlock(uctx, name, owner)
			cancel()
			return backoff.Permanent(err)
		case !ok:
			return errListBusy
		}
		return nil
	}
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(20*time.Millisecond),
		backoff.WithMaxInterval(time.Second), backoff.WithMaxElapsedTime(listLockWait))
	if err := backoff.Retry(take, backoff.WithContext(bo, ctx)); err != nil {
		if errors.Is(err, errListBusy) {
			return ctx, nil, &apiError{status: http.StatusConflict, code: codeSegmentBusy,
				message: "another change of this segment's members (or its deletion) is in progress; retry"}
		}
		return ctx, nil, fmt.Errorf("lock the list of %s/%s: %w", org, seg, err)
	}
	held, stop := membership.KeepLease(ctx, s.locks, name, owner, membership.ListLockTTL)
	return held, func() {
		stop()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := s.locks.Unlock(ctx, name, owner); err != nil {
			s.log.Warn("unlock a segment's list; it frees itself later", "org", org, "segment", seg, "err", err)
		}
	}, nil
}

// lockedStatic locks the list of static segment id of org, as lockList
// does, and reads the segment again under the lock: a deletion may have
// begun meanwhile (not found), or a change moved its generation.
func (s *Server) lockedStatic(ctx context.Context, org, id string) (context.Context, segment.Definition, func(), error) {
	held, unlock, err := s.lockList(ctx, org, id)
	if err != nil {
		return ctx, segment.Definition{}, nil, err
	}
	d, err := s.defs.Get(held, org, id)
	if errors.Is(err, membership.ErrNotFound) || (err == nil && d.Status == segment.StatusDeleting) {
		err = errNotFound
	}
	if err != nil {
		unlock()
		return ctx, segment.Definition{}, nil, err
	}
	return held, d, unlock, nil
}
