package segment

import (
	"slices"
	"strings"
)

// Index maps profile field paths to the ids of the segments whose rules read
// them, to find the segments a profile change can affect. It is immutable
// after construction and safe for concurrent reads.
type Index struct {
	// exact maps a field path to the ids of segments reading exactly it.
	exact map[string][]string
	// under maps a path to the ids of segments reading it or a field nested
	// below it: under["customFields"] includes readers of
	// "customFields.vip.level".
	under map[string][]string
	n     int
}

// NewIndex builds an index from the field paths each segment reads, keyed by
// segment id (as returned by [Rule.Fields]). Malformed or empty paths are
// kept as given; they simply never relate to a valid changed path.
func NewIndex(fieldsByID map[string][]string) *Index {
	ix := &Index{
		exact: make(map[string][]string),
		under: make(map[string][]string),
		n:     len(fieldsByID),
	}
	for id, fields := range fieldsByID {
		for _, f := range fields {
			ix.exact[f] = append(ix.exact[f], id)
			for p := f; ; {
				ix.under[p] = append(ix.under[p], id)
				i := strings.LastIndexByte(p, '.')
				if i < 0 {
					break
				}
				p = p[:i]
			}
		}
	}
	for _, m := range []map[string][]string{ix.exact, ix.under} {
		for k, ids := range m {
			slices.Sort(ids)
			m[k] = slices.Clip(slices.Compact(ids))
		}
	}
	return ix
}

// AppendAffected appends to dst the ids of the segments that read a field
// related to any of the changed paths: the same path, or one a dotted prefix
// of the other. A change of "customFields" affects readers of
// "customFields.vip", and a change of "customFields.vip.level" affects
// readers of "customFields.vip" and of "customFields". Each id is appended at
// most once, and the appended ids are sorted; ids already in dst are left as
// they are and not looked at.
func (ix *Index) AppendAffected(dst []string, changed []string) []string {
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

// mergeSorted merges the sorted, duplicate-free list l into dst[start:],
// itself sorted and duplicate-free, in linear time: the index's lists are
// kept sorted so that no per-event sort is needed. It allocates only when
// dst lacks room.
func mergeSorted(dst []string, start int, l []string) []string {
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
func (ix *Index) Len() int { return ix.n }
