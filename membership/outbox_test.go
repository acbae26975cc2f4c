package membership

import (
	"reflect"
	"testing"
)

func TestOutboxCodec(t *testing.T) {
	cases := map[string][]OutboxEntry{
		"empty":                nil,
		"one entry, no change": {{EventID: "e1", Version: 3, Rev: 7, AtMillis: 1700000000000}},
		"several": {
			{EventID: "e1", Version: -1, Rev: 1, CauseType: "profile", AtMillis: 1, Changes: []OutboxChange{{SegmentID: "seg_a", Entered: true}, {SegmentID: "seg_b"}}},
			{EventID: "segment:seg_c:2", Rev: 2, CauseType: "segment", AtMillis: 1764000000000, Changes: []OutboxChange{{SegmentID: "seg_c", Entered: true}}},
			{EventID: "", Version: 1 << 62, Rev: 3, AtMillis: -5},
		},
	}
	for name, es := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := DecodeOutbox(string(encodeOutbox(es)))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, es) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, es)
			}
			// Entries append by concatenation, as the amend script does.
			var cat []byte
			for _, e := range es {
				cat = append(cat, appendEntry(nil, e)...)
			}
			if string(cat) != string(encodeOutbox(es)) {
				t.Fatal("an outbox is not the concatenation of its entries")
			}
		})
	}
}

func TestOutboxReadsJSON(t *testing.T) {
	got, err := DecodeOutbox(`[{"e":"e1","v":2,"r":5,"k":"profile","t":9,"c":[["seg_a",1],["seg_b",0]]}]`)
	if err != nil {
		t.Fatal(err)
	}
	want := []OutboxEntry{{EventID: "e1", Version: 2, Rev: 5, CauseType: "profile", AtMillis: 9, Changes: []OutboxChange{{"seg_a", true}, {"seg_b", false}}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestOutboxRejectsCorruptInput(t *testing.T) {
	good := string(encodeOutbox([]OutboxEntry{{EventID: "e1", Rev: 1, AtMillis: 5, Changes: []OutboxChange{{SegmentID: "s", Entered: true}}}}))
	for name, s := range map[string]string{
		"truncated":  good[:len(good)-2],
		"bad marker": "\x01" + good[1:],
		"huge count": "\xe1\x00\x00\x00\x00\x00\xff\xff\xff\x0f",
		"bad json":   `[{"e":`,
	} {
		t.Run(name, func(t *testing.T) {
			if es, err := DecodeOutbox(s); err == nil {
				t.Fatalf("decoded %+v, want an error", es)
			}
		})
	}
}

// TestStateCodec: what AppendState writes, DecodeState reads back whole.
func TestStateCodec(t *testing.T) {
	cases := map[string]UserState{
		"empty": {},
		"full": {Rev: 9, Version: 17, Profile: "\x01binary", Applied: "1234:3:1qa2b3c:lx2k9",
			Segments: []string{"seg_a", "seg_b"}, Outbox: []OutboxEntry{{EventID: "e1", Rev: 9, AtMillis: 5, Changes: []OutboxChange{{SegmentID: "seg_a", Entered: true}}}}},
		"tombstone": {Rev: 3, Version: -1, Deleted: true, Applied: "7:0:abc:1"},
		"published marks": {Rev: 12, Version: -1, Profile: "\x01p", Outbox: []OutboxEntry{
			{EventID: "time:seg_a:1000", Rev: 10, CauseType: "time", AtMillis: 1000, Changes: []OutboxChange{{SegmentID: "seg_a"}}, Published: true},
			{EventID: "time:seg_b:2000", Rev: 11, CauseType: "time", AtMillis: 2000, Changes: []OutboxChange{{SegmentID: "seg_b"}}},
			{EventID: "e7", Rev: 12, AtMillis: 3000, Changes: []OutboxChange{{SegmentID: "seg_a", Entered: true}}},
		}},
	}
	for name, st := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := DecodeState(string(AppendState(nil, st)))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, st) {
				t.Errorf("decoded %+v, want %+v", got, st)
			}
		})
	}
}

func TestLastDecisions(t *testing.T) {
	const minute = 60_000 // in ms
	in := func(id string, rev, at int64, seg string, entered bool) OutboxEntry {
		return OutboxEntry{EventID: id, Rev: rev, AtMillis: at * minute, Changes: []OutboxChange{{SegmentID: seg, Entered: entered}}}
	}
	all := func(OutboxEntry) bool { return true }
	for name, tt := range map[string]struct {
		outbox []OutboxEntry
		below  int64
		take   func(OutboxEntry) bool
		want   []string // eventIds
	}{
		"one write's entry and exit, in outbox order": {
			outbox: []OutboxEntry{in("e1", 4, 10, "s", true), in("e2", 4, 10, "s", false)}, below: 5, take: all,
			want: []string{"e1", "e2"},
		},
		"by revision, whatever the outbox order": {
			outbox: []OutboxEntry{in("e2", 5, 10, "s", false), in("e1", 4, 10, "s", true)}, below: 9, take: all,
			want: []string{"e1", "e2"},
		},
		"other segments and later revisions left out": {
			outbox: []OutboxEntry{in("e1", 4, 10, "s", true), in("x", 5, 10, "t", false), in("e3", 6, 10, "s", false)}, below: 6, take: all,
			want: []string{"e1"},
		},
		"the run stops at a decision not taken": {
			outbox: []OutboxEntry{in("e1", 3, 10, "s", true), in("e2", 4, 10, "s", false), in("e3", 5, 10, "s", true)}, below: 9,
			take: func(e OutboxEntry) bool { return e.EventID != "e2" },
			want: []string{"e3"},
		},
		"the run stops at a decision marked published": {
			outbox: []OutboxEntry{in("e1", 3, 10, "s", true), {EventID: "e2", Rev: 4, AtMillis: 10 * minute, Changes: []OutboxChange{{SegmentID: "s"}}, Published: true},
				in("e3", 5, 10, "s", true)}, below: 9, take: all,
			want: []string{"e3"},
		},
		"none when the newest is marked published": {
			outbox: []OutboxEntry{in("e1", 3, 10, "s", true), {EventID: "e2", Rev: 4, AtMillis: 10 * minute, Changes: []OutboxChange{{SegmentID: "s"}}, Published: true}},
			below:  9, take: all,
		},
		"none when the newest is not taken": {
			outbox: []OutboxEntry{in("e1", 3, 10, "s", true), in("e2", 4, 10, "s", false)}, below: 9,
			take: func(e OutboxEntry) bool { return e.EventID == "e1" },
		},
		"the run stops at a decision long before the newest": {
			outbox: []OutboxEntry{in("b1", 3, 10, "s", true), in("b2", 4, 20, "s", false), in("b3", 5, 21, "s", true)}, below: 9, take: all,
			want: []string{"b2", "b3"},
		},
		"an entry found twice counts once": {
			outbox: []OutboxEntry{in("e1", 4, 10, "s", true), in("e2", 5, 10, "s", false), in("e1", 4, 10, "s", true)}, below: 9, take: all,
			want: []string{"e1", "e2"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			var got []string
			for _, d := range LastDecisions(tt.outbox, "s", tt.below, tt.take) {
				if len(d.Changes) != 1 || d.Changes[0].SegmentID != "s" {
					t.Fatalf("decision %+v: want its change of s alone", d)
				}
				got = append(got, d.EventID)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("decisions %v, want %v", got, tt.want)
			}
		})
	}
}
