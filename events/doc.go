// Package events owns the wire formats of segmentd's two topics: profile
// events read from the input topic, decoded and validated into domain values,
// and membership-change events encoded for the output topic. It does no I/O.
package events
