package main

import (
	"io/fs"
	"testing"
)

func TestContainerMemoryLimit(t *testing.T) {
	const v1 = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
	for name, tt := range map[string]struct {
		files map[string]string
		want  int64
		ok    bool
	}{
		"v2, a container's own namespace": {map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "2147483648\n"}, 2147483648, true},
		"v2, no limit":                    {map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "max\n"}, 0, false},
		"v2, a service's cgroup": {map[string]string{
			"/proc/self/cgroup": "0::/system.slice/segmentd.service\n",
			"/sys/fs/cgroup/system.slice/segmentd.service/memory.max": "max\n",
			"/sys/fs/cgroup/system.slice/memory.max":                  "1073741824\n",
		}, 1073741824, true},
		"v2, the smallest on the way up": {map[string]string{
			"/proc/self/cgroup":             "0::/a/b\n",
			"/sys/fs/cgroup/a/b/memory.max": "3000\n",
			"/sys/fs/cgroup/a/memory.max":   "2000\n",
			"/sys/fs/cgroup/memory.max":     "4000\n",
		}, 2000, true},
		"v1, the memory hierarchy's path": {map[string]string{
			"/proc/self/cgroup": "5:devices:/\n4:memory:/jobs/segmentd\n0::/\n",
			"/sys/fs/cgroup/memory/jobs/segmentd/memory.limit_in_bytes": "1073741824\n",
			"/sys/fs/cgroup/memory/memory.limit_in_bytes":               "9223372036854771712\n",
		}, 1073741824, true},
		"v1, no limit":    {map[string]string{"/proc/self/cgroup": "4:memory:/\n", v1: "9223372036854771712\n"}, 0, false},
		"no cgroup files": {map[string]string{}, 0, false},
		"unreadable":      {map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "lots"}, 0, false},
	} {
		t.Run(name, func(t *testing.T) {
			read := func(f string) ([]byte, error) {
				if s, ok := tt.files[f]; ok {
					return []byte(s), nil
				}
				return nil, &fs.PathError{Op: "open", Path: f, Err: fs.ErrNotExist}
			}
			if got, ok := containerMemoryLimit(read); got != tt.want || ok != tt.ok {
				t.Errorf("limit %d, %v; want %d, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
	if got := softMemoryLimit(1000); got != 800 {
		t.Errorf("soft limit for 1000 bytes: %d, want 800", got)
	}
}
