package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// Error codes of the JSON error body.
const (
	codeValidationFailed = segment.CodeValidationFailed
	codeLimitExceeded    = segment.CodeLimitExceeded
	codeInvalidJSON      = "invalid_json"
	codeNotFound         = "not_found"
	codeUserNotFound     = "user_not_found"
	codeUnauthorized     = "unauthorized"
	codeBodyTooLarge     = "body_too_large"
	// codeRequestTimeout answers a body that did not arrive within the
	// server's read timeout.
	codeRequestTimeout   = "request_timeout"
	codeMethodNotAllowed = "method_not_allowed"
	codeSegmentNotStatic = "segment_not_static"
	// codeIdempotencyKeyReused answers a create whose Idempotency-Key
	// created a segment from another request, or one deleted since.
	codeIdempotencyKeyReused = "idempotency_key_reused"
	// codeIdempotencyKeyInUse answers a create whose Idempotency-Key is
	// held by a request still creating the segment.
	codeIdempotencyKeyInUse = "idempotency_key_in_use"
	// codeSegmentBusy answers a change of a static list (or a deletion)
	// while another is in progress past the wait.
	codeSegmentBusy        = "segment_busy"
	codeInternal           = "internal"
	codeUnavailable        = "unavailable"
	segmentNotFoundMessage = "segment not found"
)

// errorBody is the JSON of every error:
// {"error": {"code": "…", "message": "…", "details": [{"field": "…", "message": "…"}]}}.
type errorBody struct {
	// Error is the error itself.
	Error errorObject `json:"error"`
}

type errorObject struct {
	// Code is the machine-readable error code, such as "validation_failed".
	Code string `json:"code"`
	// Message is the human-readable description of the error.
	Message string `json:"message"`
	// Details lists the field errors of a request that failed validation;
	// empty, never null, for other errors.
	Details []errorDetail `json:"details"`
}

type errorDetail struct {
	// Field names the request field at fault, as a JSON path
	// ("criteria.include[0].value").
	Field string `json:"field"`
	// Message says what is wrong with the field.
	Message string `json:"message"`
}

// apiError is an error with its HTTP answer.
type apiError struct {
	status  int
	code    string
	message string
	details []errorDetail
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.code, e.message) }

// invalid returns a 400 validation_failed error with field errors.
func invalid(message string, details ...errorDetail) *apiError {
	return &apiError{status: http.StatusBadRequest, code: codeValidationFailed, message: message, details: details}
}

// errNotFound is the answer for a segment that does not exist, or belongs to
// another organisation: the two are indistinguishable.
var errNotFound = &apiError{status: http.StatusNotFound, code: codeNotFound, message: segmentNotFoundMessage}

// writeError writes the JSON error body.
func writeError(w http.ResponseWriter, status int, code, message string, details []errorDetail) {
	if details == nil {
		details = []errorDetail{}
	}
	writeJSON(w, status, errorBody{Error: errorObject{Code: code, Message: message, Details: details}})
}

// writeJSON writes v as the JSON body of the answer.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client may be gone; nothing to do about it
}

// marshal encodes v as JSON without escaping <, > and &, as writeJSON does.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// fail answers err: the errors of the API and of the stores map to their
// status; anything else is a failure of Redis or of the publisher, which the
// client may retry, so it is a 503 (and logged).
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	var ve *segment.ValidationError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		writeError(w, ae.status, ae.code, ae.message, ae.details)
	case errors.As(err, &ve):
		details := make([]errorDetail, len(ve.Errors))
		for i, fe := range ve.Errors {
			details[i] = errorDetail{Field: fe.Field, Message: fe.Message}
		}
		msg := "the request is invalid"
		if ve.Code == segment.CodeLimitExceeded {
			msg = "a limit is exceeded"
		}
		writeError(w, http.StatusBadRequest, ve.Code, msg, details)
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, codeBodyTooLarge,
			fmt.Sprintf("the request body is larger than %d bytes", mbe.Limit), nil)
	case errors.Is(err, membership.ErrNotFound):
		writeError(w, http.StatusNotFound, codeNotFound, segmentNotFoundMessage, nil)
	case errors.Is(err, membership.ErrLimitExceeded):
		writeError(w, http.StatusBadRequest, codeLimitExceeded,
			fmt.Sprintf("an organisation can have at most %d segments", segment.MaxSegmentsPerOrg), nil)
	case errors.Is(err, membership.ErrContended):
		writeError(w, http.StatusConflict, codeSegmentBusy,
			"other requests changed the segment's record throughout this one, which could not update it; retry (a retry of this request is safe)", nil)
	case errors.Is(err, membership.ErrInvalidCursor):
		writeError(w, http.StatusBadRequest, codeValidationFailed, "the request is invalid",
			[]errorDetail{{Field: "cursor", Message: "cursor is not one this API issued"}})
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "request canceled", nil)
	default:
		s.log.Error("request failed", "method", r.Method, "route", r.Pattern, "org", orgOf(r.Context()), "err", err)
		writeError(w, http.StatusServiceUnavailable, codeUnavailable,
			"the service could not complete the request; it is safe to retry", nil)
	}
}
