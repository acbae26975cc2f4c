package membership

import "testing"

func TestClusterState(t *testing.T) {
	for name, tc := range map[string]struct{ info, want string }{
		"ok":      {"cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n", "ok"},
		"fail":    {"cluster_state:fail\r\ncluster_slots_assigned:16384\r\n", "fail"},
		"missing": {"cluster_enabled:1\r\n", ""},
	} {
		t.Run(name, func(t *testing.T) {
			if got := clusterState(tc.info); got != tc.want {
				t.Errorf("clusterState = %q, want %q", got, tc.want)
			}
		})
	}
}
