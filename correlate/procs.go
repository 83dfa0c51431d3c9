package correlate

import "hash/maphash"

// procTable indexes the tracked processes by (origin, pid). It is a
// built-in map keyed by a seeded 64-bit hash of the pair, with the rare
// processes whose hashes collide chained through proc.nextSame: a lookup
// hashes the event's two strings once and compares one uint64 per probe,
// where a map keyed by Process re-hashes both strings and compares them
// against every candidate slot's key (measured: the map keyed by Process
// was 17% of Apply's time). The chain is verified by key, so a collision
// costs a comparison, never a wrong process.
//
// The seed is random per correlator so that clients cannot choose
// colliding pids. It only decides where processes sit in memory, never
// what Apply returns: nothing iterates the table into output without
// sorting (Snapshot sorts by record number).
type procTable struct {
	byHash map[uint64]*proc
	n      int
	seed   maphash.Seed
}

func newProcTable() procTable {
	return procTable{byHash: make(map[uint64]*proc), seed: maphash.MakeSeed()}
}

func (t *procTable) hash(origin, pid string) uint64 {
	// Both halves are seeded; the multiplier keeps (a, b) and (b, a) apart.
	return maphash.String(t.seed, pid) ^ maphash.String(t.seed, origin)*0x9e3779b97f4a7c15
}

func (t *procTable) len() int { return t.n }

// get returns the process (origin, pid), or nil.
func (t *procTable) get(origin, pid string) *proc {
	return t.getHashed(t.hash(origin, pid), origin, pid)
}

// getHashed is get with h = t.hash(origin, pid) already computed.
func (t *procTable) getHashed(h uint64, origin, pid string) *proc {
	for p := t.byHash[h]; p != nil; p = p.nextSame {
		if p.key.PID == pid && p.key.Origin == origin {
			return p
		}
	}
	return nil
}

// put adds p, which must not be in the table; p.key must be set.
func (t *procTable) put(p *proc) { t.putHashed(t.hash(p.key.Origin, p.key.PID), p) }

func (t *procTable) putHashed(h uint64, p *proc) {
	p.nextSame = t.byHash[h]
	t.byHash[h] = p
	t.n++
}

// del removes p, which must be in the table.
func (t *procTable) del(p *proc) { t.delHashed(t.hash(p.key.Origin, p.key.PID), p) }

func (t *procTable) delHashed(h uint64, p *proc) {
	head := t.byHash[h]
	switch {
	case head == p && p.nextSame == nil:
		delete(t.byHash, h)
	case head == p:
		t.byHash[h] = p.nextSame
	default:
		q := head
		for q.nextSame != p {
			q = q.nextSame
		}
		q.nextSame = p.nextSame
	}
	p.nextSame = nil
	t.n--
}

// appendAll appends every process to dst, in no particular order.
func (t *procTable) appendAll(dst []*proc) []*proc {
	for _, p := range t.byHash {
		for ; p != nil; p = p.nextSame {
			dst = append(dst, p)
		}
	}
	return dst
}
