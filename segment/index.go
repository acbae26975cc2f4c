package segment

import (
	"cmp"
	"slices"
	"strings"
)

// Index maps profile field paths to the segments whose rules read them, to
// find the segments a profile change can affect. Segments are numbered 0..
// Len()-1 in ascending id order, so that callers can keep per-segment data
// in slices instead of maps keyed by id. It is immutable after construction
// and safe for concurrent reads.
type Index struct {
	ids []string
	num map[string]int32
	// exact maps a field path to the numbers of segments reading exactly it.
	exact map[string][]int32
	// under maps a path to the numbers of segments reading it or a field
	// nested below it: under["customFields"] includes readers of
	// "customFields.vip.level".
	under map[string][]int32
}

// NewIndex builds an index from the field paths each segment reads, keyed by
// segment id (as returned by [Rule.Fields]). Malformed or empty paths are
// kept as given; they simply never relate to a valid changed path.
func NewIndex(fieldsByID map[string][]string) *Index {
	ix := &Index{
		num:   make(map[string]int32, len(fieldsByID)),
		exact: make(map[string][]int32),
		under: make(map[string][]int32),
	}
	for id := range fieldsByID {
		ix.ids = append(ix.ids, id)
	}
	slices.Sort(ix.ids)
	for i, id := range ix.ids {
		ix.num[id] = int32(i)
	}
	for i, id := range ix.ids {
		for _, f := range fieldsByID[id] {
			ix.exact[f] = append(ix.exact[f], int32(i))
			for p := f; ; {
				ix.under[p] = append(ix.under[p], int32(i))
				j := strings.LastIndexByte(p, '.')
				if j < 0 {
					break
				}
				p = p[:j]
			}
		}
	}
	for _, m := range []map[string][]int32{ix.exact, ix.under} {
		for k, ns := range m {
			slices.Sort(ns)
			m[k] = slices.Clip(slices.Compact(ns))
		}
	}
	return ix
}

// AppendAffectedIndex appends to dst the numbers of the segments that read
// a field related to any of the changed paths: the same path, or one a
// dotted prefix of the other. A change of "customFields" affects readers of
// "customFields.vip", and a change of "customFields.vip.level" affects
// readers of "customFields.vip" and of "customFields". Each number is
// appended at most once, in ascending order; what dst held before is left
// as it is and not looked at.
func (ix *Index) AppendAffectedIndex(dst []int32, changed []string) []int32 {
	start := len(dst)
	for _, c := range changed {
		// Readers of c itself or of fields below it.
		dst = mergeSorted(dst, start, ix.under[c])
		// Readers of fields above c.
		for p := c; ; {
			i := strings.LastIndexByte(p, '.')
			if i < 0 {
				break
			}
			p = p[:i]
			dst = mergeSorted(dst, start, ix.exact[p])
		}
	}
	return dst
}

// AppendAffected is AppendAffectedIndex with segment ids: the ids of the
// affected segments, each once, in ascending order.
func (ix *Index) AppendAffected(dst []string, changed []string) []string {
	var buf [128]int32 // most changes affect fewer; more only costs an allocation
	for _, n := range ix.AppendAffectedIndex(buf[:0], changed) {
		dst = append(dst, ix.ids[n])
	}
	return dst
}

// ID returns the id of segment number n.
func (ix *Index) ID(n int32) string { return ix.ids[n] }

// Number returns the number of the segment with the given id.
func (ix *Index) Number(id string) (int32, bool) {
	n, ok := ix.num[id]
	return n, ok
}

// mergeSorted merges the sorted, duplicate-free list l into dst[start:],
// itself sorted and duplicate-free, in linear time: the index's lists are
// kept sorted so that no per-event sort is needed. It allocates only when
// dst lacks room.
func mergeSorted[T cmp.Ordered](dst []T, start int, l []T) []T {
	if len(l) == 0 {
		return dst
	}
	cur := dst[start:]
	if len(cur) == 0 {
		return append(dst, l...)
	}
	n := len(dst)
	i, j := 0, 0
	for i < len(cur) || j < len(l) {
		switch {
		case j == len(l) || (i < len(cur) && cur[i] < l[j]):
			dst = append(dst, cur[i])
			i++
		case i == len(cur) || l[j] < cur[i]:
			dst = append(dst, l[j])
			j++
		default:
			dst = append(dst, cur[i])
			i++
			j++
		}
	}
	merged := len(dst) - n
	copy(dst[start:], dst[n:])
	return dst[:start+merged]
}

// Len returns the number of segments in the index.
func (ix *Index) Len() int { return len(ix.ids) }
