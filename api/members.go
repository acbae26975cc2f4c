package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// Paging bounds of GET /v1/segments/{id}/members.
const (
	defaultMembersLimit = 100
	maxMembersLimit     = 1000
)

// listMembers serves GET /v1/segments/{id}/members?limit=&cursor=.
func (s *Server) listMembers(w http.ResponseWriter, r *http.Request) {
	var fe fieldErrors
	q := readQuery(&fe, r)
	limit, ok := parseLimit(&fe, q.Get("limit"), defaultMembersLimit, maxMembersLimit)
	if !ok || len(fe) > 0 {
		s.fail(w, r, fe.err())
		return
	}
	d, err := s.visibleSegment(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ids, next, err := s.sets.Members(r.Context(), d.OrgID, d.ID, limit, q.Get("cursor"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page(ids, next))
}

// isMember serves GET /v1/segments/{id}/members/{userId}: {"member": bool}.
func (s *Server) isMember(w http.ResponseWriter, r *http.Request) {
	d, err := s.visibleSegment(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ok, err := s.sets.IsMember(r.Context(), d.OrgID, d.ID, r.PathValue("userId"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"member": ok})
}

// userSegmentJSON is one segment in the answer of GET
// /v1/users/{userId}/segments.
type userSegmentJSON struct {
	// ID is the segment's id.
	ID string `json:"id"`
	// Name is the segment's display name.
	Name string `json:"name"`
	// Type is "static" or "dynamic".
	Type string `json:"type"`
}

// userSegments serves GET /v1/users/{userId}/segments: the segments the user
// is in, in id (creation) order. A user unknown to segmentd is in none.
func (s *Server) userSegments(w http.ResponseWriter, r *http.Request) {
	org := orgOf(r.Context())
	ids, err := s.sets.UserSegments(r.Context(), org, r.PathValue("userId"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defs, err := s.defs.GetMany(r.Context(), org, ids)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]userSegmentJSON, 0, len(ids))
	for _, id := range ids {
		d, ok := defs[id]
		if !ok || d.Status == segment.StatusDeleting {
			continue // a segment being deleted
		}
		out = append(out, userSegmentJSON{ID: d.ID, Name: d.Name, Type: string(d.Type)})
	}
	writeJSON(w, http.StatusOK, page(out, ""))
}

// membersEditJSON is the answer of POST /v1/segments/{id}/members.
type membersEditJSON struct {
	// Added is how many users the edit added: ids of add that were not
	// members already.
	Added int `json:"added"`
	// Removed is how many users the edit removed: ids of remove that were
	// members.
	Removed int `json:"removed"`
	// Size is the segment's exact size after the edit.
	Size int64 `json:"size"`
}

// editMembers serves POST /v1/segments/{id}/members on static segments:
// {"add": [...], "remove": [...]}. The changes are published, then written;
// the list may hold at most segment.MaxStaticUsers ids afterwards.
func (s *Server) editMembers(w http.ResponseWriter, r *http.Request) {
	d, err := s.visibleSegment(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	obj, err := s.readObject(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var fe fieldErrors
	checkKeys(&fe, "", obj, map[string]bool{"add": true, "remove": true}, nil)
	var add, remove []string
	if raw, ok := obj["add"]; ok {
		add, _ = decodeStrings(&fe, "add", raw)
	}
	if raw, ok := obj["remove"]; ok {
		remove, _ = decodeStrings(&fe, "remove", raw)
	}
	if add == nil && remove == nil && len(fe) == 0 {
		fe.add("add", "add or remove is required")
	}
	if err := fe.err(); err != nil {
		s.fail(w, r, err)
		return
	}
	if d.Type != segment.TypeStatic {
		writeError(w, http.StatusConflict, codeSegmentNotStatic,
			fmt.Sprintf("members can be added and removed only on static segments; segment %s is %s", d.ID, d.Type), nil)
		return
	}
	// Checked as given, so that errors name ids by their index in the body.
	if err := checkEdit(add, remove); err != nil {
		s.fail(w, r, err)
		return
	}
	add, remove = segment.DedupUserIDs(add), segment.DedupUserIDs(remove)

	ctx, cancel := writeContext(w, r)
	defer cancel()
	// Planned and written under the list's lock: the size limit holds
	// against concurrent adds, and no deletion runs beside the write.
	ctx, d, unlock, err := s.lockedStatic(ctx, d.OrgID, d.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer unlock()
	if d.Status == segment.StatusBuilding {
		s.fail(w, r, errCreateUnfinished)
		return
	}
	now := s.now().UTC()
	version, err := s.sets.ListVersion(ctx, d.OrgID, d.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	cause := membership.StaticCause(d.ID, version, add, remove)
	changes, size, err := s.sets.PlanEdit(ctx, d.OrgID, d.ID, add, remove, cause, now)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	added, removed := 0, 0
	for _, c := range changes {
		if c.Entered {
			added++
		} else {
			removed++
		}
	}
	newSize := size + int64(added) - int64(removed)
	if newSize > segment.MaxStaticUsers {
		writeError(w, http.StatusBadRequest, codeLimitExceeded, "a limit is exceeded", []errorDetail{{
			Field:   "add",
			Message: fmt.Sprintf("a static segment holds at most %d user ids; this change would make %d", segment.MaxStaticUsers, newSize),
		}})
		return
	}
	if err := s.publishThenApply(ctx, d, changes); err != nil {
		s.fail(w, r, err)
		return
	}
	// The ids of add that were members already: their own sets are
	// written again, with no event, so that adding a user again puts right
	// a user's set that lost the segment while the member set kept it.
	if members := alreadyMembers(add, changes); len(members) > 0 {
		if err := s.sets.RestoreUserSets(ctx, d.OrgID, d.ID, members); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	sizes, err := s.sets.Sizes(ctx, d.OrgID, []string{d.ID})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// Every edit moves the generation and updatedAt, also one that finds
	// nothing left to change: it may be the retry of an edit whose list was
	// written and whose definition was not.
	_, err = s.defs.Update(ctx, d.OrgID, d.ID, func(d *segment.Definition) error {
		if d.Status == segment.StatusDeleting {
			return membership.ErrNotFound
		}
		d.Generation++
		d.UpdatedAt = laterOf(s.now().UTC(), d.UpdatedAt)
		return nil
	})
	// A deletion begun since the list was written (it waited for our lock)
	// answers the entries published above with exits: the edit was made,
	// and the client is told so rather than "not found".
	if err != nil && !errors.Is(err, membership.ErrNotFound) {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, membersEditJSON{Added: added, Removed: removed, Size: sizes[d.ID]})
}

// alreadyMembers returns the ids of add that changes do not enter: those
// the segment's set held when the edit was planned.
func alreadyMembers(add []string, changes []events.Change) []string {
	entered := make(map[string]bool, len(changes))
	for _, c := range changes {
		if c.Entered {
			entered[c.UserID] = true
		}
	}
	var out []string
	for _, id := range add {
		if !entered[id] {
			out = append(out, id)
		}
	}
	return out
}

// checkEdit checks the lists of a members edit: non-blank ids, each list
// within the static limit, and no id in both.
func checkEdit(add, remove []string) error {
	var fe fieldErrors
	invalidFound := false
	for _, part := range []struct {
		name string
		ids  []string
	}{{"add", add}, {"remove", remove}} {
		err := segment.ValidateUserIDs(part.name, part.ids)
		if err == nil {
			continue
		}
		var ve *segment.ValidationError
		if !errors.As(err, &ve) {
			return err
		}
		invalidFound = invalidFound || ve.Code != segment.CodeLimitExceeded
		for _, e := range ve.Errors {
			fe.add(e.Field, e.Message)
		}
	}
	inAdd := make(map[string]struct{}, len(add))
	for _, id := range add {
		inAdd[id] = struct{}{}
	}
	for i, id := range remove {
		if _, ok := inAdd[id]; ok && strings.TrimSpace(id) != "" {
			invalidFound = true
			fe.add(fmt.Sprintf("remove[%d]", i), "user id "+id+" is also in add")
			if len(fe) >= 100 {
				break
			}
		}
	}
	switch {
	case len(fe) == 0:
		return nil
	case !invalidFound:
		return &apiError{status: http.StatusBadRequest, code: codeLimitExceeded, message: "a limit is exceeded", details: fe}
	}
	return fe.err()
}
