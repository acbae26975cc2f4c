package segment

import (
	"cmp"
	"encoding/binary"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Index maps profile field paths to the segments whose rules read them, to
// find the segments a profile change can affect. Segments are numbered 0..
// Len()-1 in ascending id order, so that callers can keep per-segment data
// in slices instead of maps keyed by id. It is immutable after construction,
// but for a memo of its answers, and safe for concurrent use.
type Index struct {
	ids []string
	num map[string]int32
	// memo holds the answers for the combinations of changed paths met so
	// far, copied on write (a stream's events change few combinations, and
	// merging the index's lists is most of a lookup); memoMu orders writers.
	memo   atomic.Pointer[map[string][]int32]
	memoMu sync.Mutex
	// root is a tree of the paths read, one node per key of a path: a
	// path's node is found by hashing each of its keys once, where a map
	// of every prefix of every path would hash each prefix whole, the
	// square of a deep path's length.
	root pathNode
}

// pathNode is the node of one field path in an Index.
type pathNode struct {
	// oneKey and one hold the node's only child; children holds them all
	// once there are two (most nodes have one, or none).
	oneKey   string
	one      *pathNode
	children map[string]*pathNode
	// exact holds the numbers of the segments reading exactly this path.
	exact []int32
	// under holds the numbers of the segments reading this path or a field
	// nested below it: under of "customFields" includes readers of
	// "customFields.vip.level".
	under []int32
}

// child returns n's node for key k, nil when no path read goes there.
func (n *pathNode) child(k string) *pathNode {
	if n.children == nil {
		if n.one != nil && n.oneKey == k {
			return n.one
		}
		return nil
	}
	return n.children[k]
}

// add makes c n's child for key k, which n has none for.
func (n *pathNode) add(k string, c *pathNode) {
	switch {
	case n.one == nil:
		n.oneKey, n.one = k, c
	case n.children == nil:
		n.children = map[string]*pathNode{n.oneKey: n.one, k: c}
	default:
		n.children[k] = c
	}
}

// fill computes n.under and that of every node below it, sorted and
// without duplicates. A node with one child and no readers of its own
// shares its child's list, so that a chain of keys costs one list.
func (n *pathNode) fill() {
	n.exact = slices.Clip(slices.Compact(n.exact))
	if n.children == nil {
		if n.one == nil {
			n.under = n.exact
			return
		}
		n.one.fill()
		if len(n.exact) == 0 {
			n.under = n.one.under
			return
		}
		n.under = slices.Clip(mergeSorted(slices.Clone(n.exact), 0, n.one.under))
		return
	}
	n.under = slices.Clone(n.exact)
	for _, c := range n.children {
		c.fill()
		n.under = mergeSorted(n.under, 0, c.under)
	}
	n.under = slices.Clip(n.under)
}

// NewIndex builds an index from the field paths each segment reads, keyed by
// segment id (as returned by [Rule.Fields]). Malformed or empty paths are
// kept as given; they simply never relate to a valid changed path.
func NewIndex(fieldsByID map[string][]string) *Index {
	ix := &Index{num: make(map[string]int32, len(fieldsByID))}
	for id := range fieldsByID {
		ix.ids = append(ix.ids, id)
	}
	slices.Sort(ix.ids)
	for i, id := range ix.ids {
		ix.num[id] = int32(i)
	}
	for i, id := range ix.ids {
		for _, f := range fieldsByID[id] {
			n := &ix.root
			for k, rest, more := strings.Cut(f, "."); ; k, rest, more = strings.Cut(rest, ".") {
				c := n.child(k)
				if c == nil {
					c = &pathNode{}
					n.add(k, c)
				}
				n = c
				if !more {
					break
				}
			}
			// Segments come in ascending number: exact stays sorted.
			n.exact = append(n.exact, int32(i))
		}
	}
	ix.root.fill()
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
	var kb [memoKeyMax]byte
	key, ok := memoKey(kb[:0], changed)
	if !ok {
		return ix.appendAffected(dst, changed)
	}
	m := ix.memo.Load()
	if m != nil {
		if ns, ok := (*m)[string(key)]; ok {
			return append(dst, ns...)
		}
	}
	start := len(dst)
	dst = ix.appendAffected(dst, changed)
	if m == nil || len(*m) < memoMax {
		ix.remember(string(key), slices.Clone(dst[start:]))
	}
	return dst
}

// Bounds of the memo: keys longer than memoKeyMax bytes are not
// remembered, nor any key once memoMax are; customFields paths come from
// events, so their combinations are unbounded.
const (
	memoKeyMax = 256
	memoMax    = 1024
)

// memoKey appends to dst a key for the changed paths, in their order, each
// length-prefixed so that no two lists share a key; false when it would be
// longer than memoKeyMax.
func memoKey(dst []byte, changed []string) ([]byte, bool) {
	for _, c := range changed {
		if len(dst)+binary.MaxVarintLen64+len(c) > memoKeyMax {
			return dst, false
		}
		dst = binary.AppendUvarint(dst, uint64(len(c)))
		dst = append(dst, c...)
	}
	return dst, true
}

func (ix *Index) remember(key string, ns []int32) {
	ix.memoMu.Lock()
	defer ix.memoMu.Unlock()
	var old map[string][]int32
	if p := ix.memo.Load(); p != nil {
		old = *p
	}
	if len(old) >= memoMax {
		return
	}
	m := make(map[string][]int32, len(old)+1)
	maps.Copy(m, old)
	m[key] = ns
	ix.memo.Store(&m)
}

func (ix *Index) appendAffected(dst []int32, changed []string) []int32 {
	start := len(dst)
	for _, c := range changed {
		n := &ix.root
		for k, rest, more := strings.Cut(c, "."); ; k, rest, more = strings.Cut(rest, ".") {
			if n = n.child(k); n == nil {
				break
			}
			if !more {
				// Readers of c itself or of fields below it.
				dst = mergeSorted(dst, start, n.under)
				break
			}
			// Readers of a field above c.
			dst = mergeSorted(dst, start, n.exact)
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
