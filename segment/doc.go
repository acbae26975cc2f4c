// Package segment owns the domain rules of dynamic segments: segment
// definitions, the validation and compilation of their criteria, the
// evaluation of a compiled rule against a user's profile, the explanation of
// that evaluation criterion by criterion, the index from profile fields to the
// segments that read them, and the next instant at which a time-relative
// criterion (such as "updatedAt < now-30d") can change its outcome.
//
// A user is a member of a dynamic segment when every include criterion
// matches (an empty include list matches everyone) and no exclude criterion
// matches. A criterion compares one profile field, addressed by a dotted path
// into the profile's JSON objects (for example "customFields.vip.level"), with
// a value through an operator. A field that is absent or JSON null is missing:
// it fails every positive operator, so the negative operators (not_equals,
// not_in, not_contains, not_exists), which are exact negations of their
// positive counterparts, match it. A comparison between mismatched types
// does not match either.
//
// The package is pure domain code: it performs no I/O and depends on the
// standard library only. A compiled [Rule] and an [Index] are immutable and
// safe for concurrent use; [Rule.Match] does not allocate.
package segment
