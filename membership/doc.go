// Package membership owns everything segmentd keeps in Redis: segment
// definitions, user profiles with their versions and outboxes, each
// organisation's index of its users, the public membership sets read by
// campaign services, and schedules. It works on a single Redis and on Redis
// Cluster alike: every multi-key step stays inside one hash tag.
package membership
