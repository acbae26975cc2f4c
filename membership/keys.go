package membership

// The public Redis layout of the contract, read by campaign services. Both key
// shapes are a promise to users: they change only with the contract. The
// braces are Redis Cluster hash tags.

// SegmentMembersKey returns the public key of the SET of user ids in a segment:
// "seg:{<org>:<segmentId>}:members". SISMEMBER answers membership and SCARD
// is the exact size.
func SegmentMembersKey(org, segmentID string) string {
	return "seg:{" + org + ":" + segmentID + "}:members"
}

// UserSegmentsKey returns the public key of the SET of segment ids that a user
// is in: "user:{<org>:<userId>}:segments".
func UserSegmentsKey(org, userID string) string {
	return "user:{" + org + ":" + userID + "}:segments"
}
