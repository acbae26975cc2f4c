package main

import (
	"math"
	"path"
	"slices"
	"strconv"
	"strings"
)

// memoryLimitShare is the part of a container's memory limit that the Go
// runtime's soft limit is set to when GOMEMLIMIT is not: the rest is for
// what the runtime does not count and for the collector to catch up.
const memoryLimitShare = 0.8

// containerMemoryLimit returns the memory limit of the process's cgroup,
// the smallest on the way up from it to the root (cgroup v2's memory.max,
// v1's memory.limit_in_bytes), in bytes; false when there is none or none
// can be read. With GOGC at 400 the heap may grow to five times what is
// live before a collection: a soft limit below the container's makes the
// collector run earlier instead of the container being killed (a backlog
// of large records, say).
func containerMemoryLimit(read func(string) ([]byte, error)) (int64, bool) {
	b, err := read("/proc/self/cgroup")
	if err != nil {
		return 0, false
	}
	var limit int64
	found := false
	for line := range strings.Lines(string(b)) {
		// hierarchy-ID:controllers:path; v2's is 0 with no controllers.
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		var root, file string
		switch {
		case parts[0] == "0" && parts[1] == "":
			root, file = "/sys/fs/cgroup", "memory.max"
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			root, file = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
		default:
			continue
		}
		for dir := path.Clean("/" + parts[2]); ; dir = path.Dir(dir) {
			if b, err := read(path.Join(root, dir, file)); err == nil {
				if n, ok := parseMemoryLimit(string(b)); ok && (!found || n < limit) {
					limit, found = n, true
				}
			}
			if dir == "/" {
				break
			}
		}
	}
	return limit, found
}

// parseMemoryLimit reads a cgroup memory limit: a number of bytes, or "max"
// (v2) or a number near the largest int64 (v1) for none.
func parseMemoryLimit(s string) (int64, bool) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 || n >= math.MaxInt64/2 {
		return 0, false
	}
	return n, true
}

// softMemoryLimit returns the runtime's soft memory limit for a container
// limit of n bytes.
func softMemoryLimit(n int64) int64 { return int64(float64(n) * memoryLimitShare) }
