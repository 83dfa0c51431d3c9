package correlate

// links are the prev/next pointers of an intrusive doubly linked list. The
// correlator's tables keep their entries in one list each, oldest first, so
// that expiry and eviction take the head in O(1) and a touched entry moves
// to the tail in O(1), without allocating list elements.
type links[T any] struct{ prev, next *T }

type listNode[T any] interface {
	*T
	lnk() *links[T]
}

type dlist[T any, P listNode[T]] struct {
	head, tail *T
	n          int
}

func (l *dlist[T, P]) pushBack(x *T) {
	lx := P(x).lnk()
	lx.prev, lx.next = l.tail, nil
	if l.tail != nil {
		P(l.tail).lnk().next = x
	} else {
		l.head = x
	}
	l.tail = x
	l.n++
}

func (l *dlist[T, P]) remove(x *T) {
	lx := P(x).lnk()
	if lx.prev != nil {
		P(lx.prev).lnk().next = lx.next
	} else {
		l.head = lx.next
	}
	if lx.next != nil {
		P(lx.next).lnk().prev = lx.prev
	} else {
		l.tail = lx.prev
	}
	lx.prev, lx.next = nil, nil
	l.n--
}

func (l *dlist[T, P]) moveToBack(x *T) {
	if l.tail == x {
		return
	}
	l.remove(x)
	l.pushBack(x)
}
