package processor

import "testing"

func TestPosition(t *testing.T) {
	at := func(topic string, partition int, offset int64) position {
		return positionOf(Record{Topic: topic, Partition: partition, Offset: offset})
	}
	stored := at("profiles", 2, 100)
	tests := map[string]struct {
		q      position
		covers bool
	}{
		"earlier offset":    {at("profiles", 2, 99), true},
		"same offset":       {at("profiles", 2, 100), true},
		"later offset":      {at("profiles", 2, 101), false},
		"another partition": {at("profiles", 1, 5), false},
		"another topic":     {at("profiles-v2", 2, 5), false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := stored.covers(tt.q); got != tt.covers {
				t.Errorf("covers = %v, want %v", got, tt.covers)
			}
		})
	}
	back, ok := parsePosition(stored.String())
	if !ok || back != stored {
		t.Errorf("parsePosition(%q) = %+v, %v; want %+v", stored.String(), back, ok, stored)
	}
	for _, s := range []string{"", "x", "x:1:y"} {
		if _, ok := parsePosition(s); ok {
			t.Errorf("parsePosition(%q) accepted", s)
		}
	}
}

func TestBelowFloors(t *testing.T) {
	at := func(partition int, offset int64) position {
		return positionOf(Record{Topic: "profiles", Partition: partition, Offset: offset})
	}
	floors := []position{at(0, 10)}
	tests := map[string]struct {
		p    position
		want bool
	}{
		"before the floor":    {at(0, 9), true},
		"at the floor":        {at(0, 10), false},
		"after the floor":     {at(0, 11), false},
		"another partition's": {at(1, 50), true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := belowFloors(tt.p, floors); got != tt.want {
				t.Errorf("belowFloors = %v, want %v", got, tt.want)
			}
		})
	}
}
