package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

type orgKey struct{}

// orgOf returns the organisation authenticated for the request, "" when none.
func orgOf(ctx context.Context) string {
	org, _ := ctx.Value(orgKey{}).(string)
	return org
}

// authenticate lets through only requests with a valid
// "Authorization: Bearer <key>", and puts the key's organisation in the
// request context: the organisation comes from the key alone.
func (s *Server) authenticate(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		org, ok := s.lookupKey(r.Header.Get("Authorization"))
		if !ok {
			unauthorized(w)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), orgKey{}, org)))
	}
}

// unauthorized answers a call without a valid key.
func unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="segmentd"`)
	writeError(w, http.StatusUnauthorized, codeUnauthorized, "a valid API key is required: Authorization: Bearer <key>", nil)
}

// lookupKey returns the organisation of the bearer key in an Authorization
// header. It compares the key's hash with every known hash in constant time,
// so that neither the key nor which organisation it belongs to leaks through
// timing.
func (s *Server) lookupKey(header string) (string, bool) {
	scheme, key, found := strings.Cut(strings.TrimSpace(header), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	key = strings.TrimSpace(key)
	if key == "" {
		return "", false
	}
	sum := sha256.Sum256([]byte(key))
	org := ""
	for _, k := range s.keys {
		if subtle.ConstantTimeCompare(sum[:], k.hash[:]) == 1 {
			org = k.org
		}
	}
	return org, org != ""
}
