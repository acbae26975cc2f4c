package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// Paging bounds of GET /v1/segments.
const (
	defaultSegmentsLimit = 50
	maxSegmentsLimit     = 100
)

// listSegments serves GET /v1/segments?limit=&type=&cursor=.
func (s *Server) listSegments(w http.ResponseWriter, r *http.Request) {
	org := orgOf(r.Context())
	var fe fieldErrors
	q := readQuery(&fe, r)
	limit, ok := parseLimit(&fe, q.Get("limit"), defaultSegmentsLimit, maxSegmentsLimit)
	typ := segment.Type(q.Get("type"))
	if typ != "" && typ != segment.TypeStatic && typ != segment.TypeDynamic {
		fe.add("type", `type must be "static" or "dynamic"`)
	}
	if !ok || len(fe) > 0 {
		s.fail(w, r, fe.err())
		return
	}
	defs, next, err := s.defs.List(r.Context(), org, membership.ListOptions{Limit: limit, Type: typ, Cursor: q.Get("cursor")})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ids := make([]string, len(defs))
	for i, d := range defs {
		ids[i] = d.ID
	}
	sizes, err := s.sets.Sizes(r.Context(), org, ids)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]segmentJSON, len(defs))
	for i, d := range defs {
		// Lists leave out static user ids (up to 100,000 per segment);
		// GET /v1/segments/{id} or its members carry them.
		out[i] = segmentOut(d, sizes[d.ID], nil)
	}
	writeJSON(w, http.StatusOK, page(out, next))
}

// sortedCopy returns ids sorted, in a new slice.
func sortedCopy(ids []string) []string {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

// writeTimeout bounds the work of a call that writes membership.
const writeTimeout = 5 * time.Minute

// rollbackTimeout bounds the rollback of a static create that failed.
const rollbackTimeout = 30 * time.Second

// writeContext returns the context of a call that writes: it is not
// canceled when the client goes away, so that a write once begun is not cut
// in the middle by a disconnect. It moves the response's write deadline
// past writeTimeout, so that the client still gets the answer of a long
// write (a deletion of a large segment) rather than a closed connection.
func writeContext(w http.ResponseWriter, r *http.Request) (context.Context, context.CancelFunc) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout + 10*time.Second))
	return context.WithTimeout(context.WithoutCancel(r.Context()), writeTimeout)
}

// parseLimit parses the limit query parameter: def when empty, else an
// integer from 1 to max.
func parseLimit(fe *fieldErrors, v string, def, max int) (int, bool) {
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		fe.add("limit", fmt.Sprintf("limit must be an integer from 1 to %d", max))
		return 0, false
	}
	return n, true
}

// createSegment serves POST /v1/segments.
func (s *Server) createSegment(w http.ResponseWriter, r *http.Request) {
	org := orgOf(r.Context())
	b, err := s.decodeSegmentBody(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var fe fieldErrors
	if b.Name == nil {
		fe.add("name", "name is required")
	}
	if b.Type == nil {
		fe.add("type", `type is required: "static" or "dynamic"`)
	} else {
		switch segment.Type(*b.Type) {
		case segment.TypeDynamic:
			if b.Criteria == nil {
				fe.add("criteria", "criteria are required for a dynamic segment")
			}
			if b.UserIDs != nil {
				fe.add("userIds", "userIds are only allowed for static segments")
			}
		case segment.TypeStatic:
			if b.UserIDs == nil {
				fe.add("userIds", "userIds are required for a static segment (an empty list is allowed)")
			}
			if b.Criteria != nil {
				fe.add("criteria", "criteria are only allowed for dynamic segments")
			}
		}
	}
	if err := b.check(fe); err != nil {
		s.fail(w, r, err)
		return
	}
	now := s.now().UTC()
	d := segment.Definition{
		OrgID:     org,
		Type:      segment.Type(*b.Type),
		UserIDs:   b.UserIDs,
		CreatedAt: now,
		UpdatedAt: now,
	}
	b.applyTo(&d)
	// The size first: compiling criteria of megabytes costs as much.
	err = checkCriteriaSize(d.Criteria)
	if err == nil {
		err = d.Validate()
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d.UserIDs = segment.DedupUserIDs(d.UserIDs)
	userIDs := d.UserIDs
	// A static segment, too, is building until its list is written in
	// full: one whose create stops part way (its instance dies) says so,
	// and the jobs roll it back if no retry finishes it.
	d.Status = segment.StatusBuilding
	d.EstimatedSize = 0
	if d.Type == segment.TypeStatic {
		d.Criteria = segment.Criteria{}
	}
	ctx, cancel := writeContext(w, r)
	defer cancel()
	var ic *membership.IdempotentCreate
	if key, ok := r.Header[idempotencyHeader]; ok {
		if err := checkIdempotencyKey(key); err != nil {
			s.fail(w, r, err)
			return
		}
		fp, err := createFingerprint(d)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		ic = &membership.IdempotentCreate{Key: key[0], Fingerprint: fp, Pending: d.Type == segment.TypeStatic, Lease: pendingCreateLease}
	}
	created, replayed, claim, err := s.insert(ctx, d, ic)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// A new static segment's list, or the list of one whose create this
	// request took over from a request that stopped before writing it: the
	// list is this request's, since the fingerprints match, and writing it
	// again publishes the same events.
	if claim != nil || (!replayed && created.Type == segment.TypeStatic) {
		// Only a deletion can hold the new segment's list: it then goes.
		ctx, listed, unlock, err := s.lockedStatic(ctx, org, created.ID)
		if err != nil {
			// A segment this request created is deleted as a DELETE does
			// (waiting for whoever holds its list), so that the client's
			// retry leaves no empty second segment behind; one being
			// deleted already goes anyway. Once it is hidden, its key, if
			// any, is released, so that the retry creates it again at once
			// rather than be refused until the lease runs out; should it
			// not be hidden, the key stays, and a retry after the lease
			// finishes this create. A create taken over stays pending.
			if !replayed {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
				hidden := errors.Is(err, errNotFound)
				if !hidden {
					_, derr := s.defs.MarkDeleting(dctx, org, created.ID)
					hidden = derr == nil || errors.Is(derr, membership.ErrNotFound)
					if derr == nil {
						derr = s.removeSegment(dctx, created, now)
					}
					if derr != nil && !errors.Is(derr, membership.ErrNotFound) {
						s.log.Error("remove a static segment whose list could not be locked; delete it to clean up",
							"org", org, "segment", created.ID, "err", derr)
					}
				}
				cancel()
				// A segment another request deleted meanwhile keeps its
				// key, as after any deletion of the key's segment: a retry
				// is a 409, not a second segment.
				if claim != nil && hidden && !errors.Is(err, errNotFound) {
					s.forgetCreate(ctx, created, claim)
				}
			}
			if errors.Is(err, errNotFound) {
				// Not a 404: the request created the segment, and another
				// deleted it before its list was written.
				err = deletedByAnother(ic != nil, "before its list was written")
			}
			s.fail(w, r, err)
			return
		}
		defer unlock()
		if replayed && claim != nil && s.listChanged(ctx, w, r, claim, listed, created) {
			return
		}
		if published, err := s.writeStaticList(ctx, listed, userIDs, now); err != nil {
			// A segment created by an earlier request may have been
			// answered 201 (when only the record of its end failed): it
			// stays, and a retry after this request's lease finishes it.
			if !replayed {
				s.rollbackCreate(ctx, created, claim, userIDs, now, published)
			}
			s.fail(w, r, err)
			return
		}
		ready, err := s.markListed(ctx, created)
		if errors.Is(err, membership.ErrNotFound) {
			// Another request deleted the segment while its list was
			// written (its DELETE waits for this lock, and its exits answer
			// the entries published here): answered as a deletion before
			// the list was written is, and the key, if any, stays, so that
			// a retry does not create the deleted segment again.
			s.fail(w, r, deletedByAnother(ic != nil, "while its list was written"))
			return
		}
		if err != nil {
			// As a failed write of the list: the segment goes, or stays
			// building for a retry after the lease to finish.
			if !replayed {
				s.rollbackCreate(ctx, created, claim, userIDs, now, true)
			}
			s.fail(w, r, err)
			return
		}
		created = ready
		if claim != nil {
			if err := s.defs.FinishCreate(ctx, claim); err != nil {
				// A retry after the lease takes the create over and
				// writes the list again (the same events), unless the
				// list has changed since.
				s.log.Warn("record a create as finished", "org", org, "segment", created.ID, "err", err)
			}
		}
	}
	if replayed && claim == nil && created.Type == segment.TypeStatic && created.Status == segment.StatusBuilding {
		// An earlier request wrote the list whole (the replay found its
		// version moved, and no list change is allowed while building) and
		// stopped before marking the segment ready: the create is finished,
		// and the segment is ready, not left for the jobs to roll back.
		ready, err := s.markListed(ctx, created)
		if errors.Is(err, membership.ErrNotFound) {
			err = deletedByAnother(true, "before it was marked ready")
		}
		if err != nil {
			s.fail(w, r, err)
			return
		}
		created = ready
	}
	if replayed {
		s.replayCreate(w, r, created)
		return
	}
	var size int64
	if created.Type == segment.TypeStatic {
		size = int64(len(userIDs))
		userIDs = sortedCopy(userIDs)
	}
	w.Header().Set("Location", "/v1/segments/"+created.ID)
	writeJSON(w, http.StatusCreated, segmentOut(created, size, userIDs))
}

// deletedByAnother is the answer to a static create whose segment another
// request deleted before the create was finished (when, says at what
// point): a 409, not a 404, as the request did create it; with a key, as a
// retry after any deletion of the key's segment is answered.
func deletedByAnother(keyed bool, when string) *apiError {
	code := codeSegmentBusy
	if keyed {
		code = codeIdempotencyKeyReused
	}
	return &apiError{status: http.StatusConflict, code: code,
		message: "the segment this request created was deleted by another request " + when}
}

// markListed makes a static segment whose list is written in full ready.
func (s *Server) markListed(ctx context.Context, d segment.Definition) (segment.Definition, error) {
	return s.defs.Update(ctx, d.OrgID, d.ID, func(d *segment.Definition) error {
		switch d.Status {
		case segment.StatusDeleting:
			return membership.ErrNotFound
		case segment.StatusReady:
			return membership.ErrUnchanged
		}
		d.Status = segment.StatusReady
		return nil
	})
}

// errCreateUnfinished refuses a change of a static list whose create has
// not finished.
var errCreateUnfinished = &apiError{status: http.StatusConflict, code: codeSegmentBusy,
	message: "this segment's create has not finished: its retry finishes it, and one not retried is removed within 20 minutes"}

// pendingCreateLease is how long a static create made with an
// Idempotency-Key has to write its list before a retry may take it over:
// longer than the request can run, its rollback included.
const pendingCreateLease = writeTimeout + rollbackTimeout + 10*time.Second

// idempotencyHeader is the request header that makes a create safe to retry.
const idempotencyHeader = "Idempotency-Key"

// checkIdempotencyKey accepts one header value of 1-255 visible ASCII
// characters.
func checkIdempotencyKey(values []string) error {
	bad := func(msg string) error {
		return invalid("the request is invalid", errorDetail{Field: idempotencyHeader, Message: msg})
	}
	if len(values) != 1 {
		return bad("give the Idempotency-Key header once")
	}
	k := values[0]
	if k == "" || len(k) > 255 {
		return bad("Idempotency-Key must be 1-255 characters")
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return bad("Idempotency-Key must be visible ASCII characters (no spaces)")
		}
	}
	return nil
}

// createFingerprint identifies what a create asks for, whatever the JSON's
// spacing or member order: the fields the client gave, as validated (the
// criteria of a dynamic segment, the sorted list of a static one).
func createFingerprint(d segment.Definition) (string, error) {
	var criteria *segment.Criteria
	var userIDs []string
	if d.Type == segment.TypeStatic {
		userIDs = sortedCopy(d.UserIDs)
	} else {
		criteria = &d.Criteria
	}
	raw, err := json.Marshal(struct {
		Name, Description, URL, Type string
		Criteria                     *segment.Criteria
		UserIDs                      []string
	}{d.Name, d.Description, d.URL, string(d.Type), criteria, userIDs})
	if err != nil {
		return "", fmt.Errorf("fingerprint of a create: %w", err)
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:16]), nil
}

// insert creates d, idempotently when ic is not nil. It reports whether an
// earlier request with the key had created the segment, and the claim this
// request holds on a pending create.
func (s *Server) insert(ctx context.Context, d segment.Definition, ic *membership.IdempotentCreate) (segment.Definition, bool, *membership.Claim, error) {
	if ic == nil {
		created, err := s.defs.Create(ctx, d)
		return created, false, nil, err
	}
	out, err := s.defs.CreateIdempotent(ctx, d, *ic)
	keyError := func(status int, message, detail string) error {
		return &apiError{status: status, code: codeIdempotencyKeyReused, message: message,
			details: []errorDetail{{Field: idempotencyHeader, Message: detail}}}
	}
	switch {
	case errors.Is(err, membership.ErrIdempotencyKeyReused):
		err = keyError(http.StatusUnprocessableEntity, "this Idempotency-Key was used with a different request", "use a new key for a new segment")
	case errors.Is(err, membership.ErrCreateInProgress):
		err = &apiError{status: http.StatusConflict, code: codeIdempotencyKeyInUse,
			message: "a request with this Idempotency-Key is still creating the segment; retry later",
			details: []errorDetail{{Field: idempotencyHeader, Message: "in use by a request in progress"}}}
	case errors.Is(err, membership.ErrNotFound):
		err = keyError(http.StatusConflict, "the segment this Idempotency-Key created has been deleted since", "use a new key to create the segment again")
	}
	return out.Definition, out.Replayed, out.Claim, err
}

// replayCreate answers a retried create with the segment as it is now.
func (s *Server) replayCreate(w http.ResponseWriter, r *http.Request, d segment.Definition) {
	out, err := s.present(r.Context(), d)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Idempotent-Replayed", "true")
	w.Header().Set("Location", "/v1/segments/"+d.ID)
	writeJSON(w, http.StatusCreated, out)
}

// listChanged reports whether the list of a static segment whose create
// this request took over changed since it did (an edit of its members made
// while this request waited for the list's lock, even one whose definition
// update then failed): that change is newer than the create's list, and
// stays. It then finishes the create and answers as a replay, or answers
// the error of reading the list's version.
func (s *Server) listChanged(ctx context.Context, w http.ResponseWriter, r *http.Request, claim *membership.Claim, listed, created segment.Definition) bool {
	v, err := s.sets.ListVersion(ctx, listed.OrgID, listed.ID)
	if err != nil {
		s.fail(w, r, err)
		return true
	}
	if v == 0 && listed.Generation == created.Generation {
		return false
	}
	if listed.Status == segment.StatusBuilding {
		// Written whole by another request that stopped before marking it.
		ready, err := s.markListed(ctx, listed)
		if err != nil {
			s.fail(w, r, err)
			return true
		}
		listed = ready
	}
	if err := s.defs.FinishCreate(ctx, claim); err != nil {
		s.log.Warn("record a create as finished", "org", listed.OrgID, "segment", listed.ID, "err", err)
	}
	s.replayCreate(w, r, listed)
	return true
}

// writeStaticList makes a static segment's members exactly userIDs:
// it plans the changes, publishes them, then writes them. A failed write is
// reported; retrying the same request publishes the same events again
// (deterministic ids) and finishes the write. It reports whether it began
// publishing: a failure before that published and wrote nothing.
func (s *Server) writeStaticList(ctx context.Context, d segment.Definition, userIDs []string, now time.Time) (bool, error) {
	v, err := s.sets.ListVersion(ctx, d.OrgID, d.ID)
	if err != nil {
		return false, err
	}
	cause := membership.StaticCause(d.ID, v, userIDs, nil)
	changes, err := s.sets.PlanReplace(ctx, d.OrgID, d.ID, userIDs, cause, now)
	if err != nil {
		return false, err
	}
	return len(changes) > 0, s.publishThenApply(ctx, d, changes)
}

// publishThenApply publishes changes of static segment d's list, then
// writes them to the membership sets, so that no change is written without
// being published; the list's version moves with the write.
func (s *Server) publishThenApply(ctx context.Context, d segment.Definition, changes []events.Change) error {
	if len(changes) == 0 {
		return nil
	}
	if err := s.publish(ctx, changes); err != nil {
		return err
	}
	if err := s.sets.ApplyList(ctx, d.OrgID, d.ID, changes); err != nil {
		return fmt.Errorf("write membership: %w", err)
	}
	return nil
}

// publishChunk is how many changes one call to the publisher carries.
const publishChunk = 1000

// publish publishes changes in order, publishChunk at a time: the Kafka
// writer is shared by every organisation's list changes and deletions and
// by the jobs, one call at a time, so a list of 100,000 ids published in
// one call would hold the others back until its last record is
// acknowledged, and would hold all of its records in memory at once.
func (s *Server) publish(ctx context.Context, changes []events.Change) error {
	if s.pub == nil || len(changes) == 0 {
		return nil
	}
	for chunk := range slices.Chunk(changes, publishChunk) {
		if err := s.pub.Publish(ctx, chunk); err != nil {
			return fmt.Errorf("publish %d membership changes: %w", len(changes), err)
		}
	}
	return nil
}

// rollbackCreate removes a static segment whose list could not be
// published or written, so that the client's retry does not leave a second
// segment behind (with an Idempotency-Key, the claim on the create is
// forgotten, so that the retry creates it again).
// When the list's entries were being published, they may have gone out in
// part, so each listed user is answered with an exit, the one a deletion
// publishes. It runs past ctx's end: the request's deadline may be what
// failed.
func (s *Server) rollbackCreate(ctx context.Context, d segment.Definition, claim *membership.Claim, userIDs []string, now time.Time, published bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	// Marked first, as a deletion is: should the rollback stop part way,
	// the segment is hidden rather than left ready with its membership half
	// removed, and a DELETE of its id, or the jobs after DeletionGrace,
	// finish the removal, exits included.
	if _, err := s.defs.MarkDeleting(ctx, d.OrgID, d.ID); err != nil && !errors.Is(err, membership.ErrNotFound) {
		s.log.Error("roll back a static segment: not marked deleting; delete it to clean up", "org", d.OrgID, "segment", d.ID, "err", err)
		return
	}
	var err error
	if published {
		// Every listed user into the segment's own set first, which the
		// removal works from: a write that stopped between the users' sets
		// and the segment's left users that the segment's set does not
		// name.
		err = s.sets.Enlist(ctx, d.OrgID, d.ID, userIDs)
	}
	if err == nil {
		_, err = s.sets.DeleteSegment(ctx, d.OrgID, d.ID, now, s.publish)
	}
	if err == nil {
		err = s.defs.Delete(ctx, d.OrgID, d.ID)
		if errors.Is(err, membership.ErrNotFound) {
			err = nil // a deletion came first
		}
	}
	if err != nil {
		s.log.Warn("roll back a static segment: its removal is left to a DELETE or the deletion job",
			"org", d.OrgID, "segment", d.ID, "err", err)
	}
	// Hidden, the segment is the deletion's: the key is released whatever
	// the removal did, so that the client's retry creates the segment again
	// (under a new id) rather than be told it was deleted.
	if claim != nil {
		s.forgetCreate(ctx, d, claim)
	}
}

// forgetCreate releases the Idempotency-Key of a create rolled back, in a
// context of its own: the removal before it may have used up its caller's,
// waiting on Kafka.
func (s *Server) forgetCreate(ctx context.Context, d segment.Definition, claim *membership.Claim) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.defs.ForgetCreate(fctx, claim); err != nil {
		s.log.Error("roll back a static segment: its Idempotency-Key is kept; a retry with it is told the segment was deleted",
			"org", d.OrgID, "segment", d.ID, "err", err)
	}
}

// getSegment serves GET /v1/segments/{id}.
func (s *Server) getSegment(w http.ResponseWriter, r *http.Request) {
	d, err := s.visibleSegment(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out, err := s.present(r.Context(), d)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// visibleSegment returns the segment named by the path for the request's
// organisation; another organisation's segment, or one being deleted, is
// not found.
func (s *Server) visibleSegment(r *http.Request) (segment.Definition, error) {
	d, err := s.defs.Get(r.Context(), orgOf(r.Context()), r.PathValue("id"))
	if errors.Is(err, membership.ErrNotFound) || (err == nil && d.Status == segment.StatusDeleting) {
		return segment.Definition{}, errNotFound
	}
	return d, err
}

// present returns the full JSON of a segment: its exact size and, for a
// static segment, its list.
func (s *Server) present(ctx context.Context, d segment.Definition) (segmentJSON, error) {
	if d.Type == segment.TypeStatic {
		ids, err := s.sets.AllMembers(ctx, d.OrgID, d.ID)
		if err != nil {
			return segmentJSON{}, err
		}
		return segmentOut(d, int64(len(ids)), ids), nil
	}
	sizes, err := s.sets.Sizes(ctx, d.OrgID, []string{d.ID})
	if err != nil {
		return segmentJSON{}, err
	}
	return segmentOut(d, sizes[d.ID], nil), nil
}

// replaceSegment serves PUT /v1/segments/{id}: the fields given replace
// name, description, url and criteria (dynamic) or userIds (static); fields
// left out keep their values, and the type cannot change. New criteria bump
// the generation and put the segment back to building; a new static list is
// published and written as a diff.
func (s *Server) replaceSegment(w http.ResponseWriter, r *http.Request) {
	cur, err := s.visibleSegment(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	b, err := s.decodeSegmentBody(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var fe fieldErrors
	if b.Type != nil && segment.Type(*b.Type) != cur.Type {
		fe.add("type", fmt.Sprintf("the type of a segment cannot change (it is %s)", cur.Type))
	}
	if cur.Type == segment.TypeStatic && b.Criteria != nil {
		fe.add("criteria", "criteria are only allowed for dynamic segments")
	}
	if cur.Type == segment.TypeDynamic && b.UserIDs != nil {
		fe.add("userIds", "userIds are only allowed for static segments")
	}
	if err := b.check(fe); err != nil {
		s.fail(w, r, err)
		return
	}
	// apply puts the body's fields on d; it runs again on every
	// compare-and-set retry, on the definition as freshly read.
	apply := b.applyTo
	next := cur
	apply(&next)
	next.UserIDs = b.UserIDs
	next.Normalize()
	// Criteria stored before their size was bounded still take a rename.
	err = nil
	if b.Criteria != nil {
		err = checkCriteriaSize(next.Criteria)
	}
	if err == nil {
		err = next.Validate()
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	next.UserIDs = segment.DedupUserIDs(next.UserIDs)
	userIDs := next.UserIDs
	now := s.now().UTC()
	ctx, cancel := writeContext(w, r)
	defer cancel()
	if cur.Type == segment.TypeStatic && b.UserIDs != nil {
		ctx, listed, unlock, err := s.lockedStatic(ctx, cur.OrgID, cur.ID)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		defer unlock()
		if listed.Status == segment.StatusBuilding {
			s.fail(w, r, errCreateUnfinished)
			return
		}
		// The list's changes take effect now, once the lock is ours.
		if _, err := s.writeStaticList(ctx, listed, userIDs, laterOf(s.now().UTC(), now)); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	updated, err := s.defs.Update(ctx, cur.OrgID, cur.ID, func(d *segment.Definition) error {
		if d.Status == segment.StatusDeleting {
			return membership.ErrNotFound
		}
		before := *d
		apply(d)
		switch {
		case d.Type == segment.TypeDynamic && !sameCriteria(before.Criteria, d.Criteria):
			d.Generation++
			d.Status = segment.StatusBuilding
			d.BackfillScanned = 0
		case d.Type == segment.TypeStatic && b.UserIDs != nil:
			// Every list given moves the generation and updatedAt, also one
			// that finds nothing left to change: it may be the retry of a
			// PUT whose list was written and whose definition was not.
			d.Generation++
		case d.Name == before.Name && d.Description == before.Description && d.URL == before.URL:
			return membership.ErrUnchanged
		}
		// The time of this write (not of the request's start, which may
		// have waited for the list's lock or lost a compare-and-set), and
		// never before the write it follows.
		d.UpdatedAt = laterOf(s.now().UTC(), before.UpdatedAt)
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out, err := s.present(ctx, updated)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// sameCriteria reports whether a and b are the same criteria, values
// compared as JSON.
func sameCriteria(a, b segment.Criteria) bool {
	ja, erra := json.Marshal(criteriaOut(a))
	jb, errb := json.Marshal(criteriaOut(b))
	return erra == nil && errb == nil && string(ja) == string(jb)
}

// deleteSegment serves DELETE /v1/segments/{id}: it hides the segment, then
// publishes an exit for every member and removes the membership chunk by
// chunk, then deletes the definition. A failure answers 503 and the client's
// retry continues where it stopped.
func (s *Server) deleteSegment(w http.ResponseWriter, r *http.Request) {
	org := orgOf(r.Context())
	ctx, cancel := writeContext(w, r)
	defer cancel()
	d, err := s.defs.Get(ctx, org, r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.removeSegment(ctx, d, s.now().UTC()); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// removeSegment deletes a segment and its membership (see
// processor.SegmentDeletion); its exits take effect no earlier than now.
func (s *Server) removeSegment(ctx context.Context, d segment.Definition, now time.Time) error {
	return processor.SegmentDeletion{Definitions: s.defs, Remover: s.sets, Await: s.await, Lock: s.lockList, Publish: s.publish,
		Now: s.now}.Remove(ctx, d, now)
}

// laterOf returns the later of a and b.
func laterOf(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
