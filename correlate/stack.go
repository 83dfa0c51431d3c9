package correlate

import (
	"slices"
	"strings"
)

// proc is one traced process's correlation state: its open frames and what
// spawn linking needs (its first event). A process stays tracked after its
// stack empties (and after EXIT) until ProcessTTL of log time without an
// event or eviction by the MaxProcesses bound, so that a spawn notice that
// arrives after a short-lived child has already run still finds the
// child's first event.
type proc struct {
	key        Process // strings owned by the correlator; PID set by setPID
	pidBuf     [24]byte
	no         uint64  // state-record number
	tick       uint64  // c.seq at the last touch: the LRU order, persisted
	lastActive int64   // log time of the last touch
	first      EventID // the first event applied for this process
	firstIdx   int     // first's index in the batch that created the process
	firstHome  uint32  // the shard that stored first (this one, or the one it split from)
	overflow   uint32  // CALLs beyond MaxStackDepth not yet closed
	frames     []frame // open calls, bottom first
	nextSame   *proc   // next process with the same key hash (procTable)
	born       uint64  // epoch that created it (0: restored)
	dirty      uint64  // epoch that last marked it for a state record
	dead       bool
}

// setPID sets p's PID to a copy of pid, kept inside p itself when it fits
// (an Erlang pid's text does): a lookup then compares the pid without a
// cache miss on a separately allocated string.
func (p *proc) setPID(pid string) {
	if len(pid) == 0 || len(pid) > len(p.pidBuf) {
		p.key.PID = strings.Clone(pid)
		return
	}
	n := copy(p.pidBuf[:], pid)
	p.key.PID = bytesToString(p.pidBuf[:n])
}

// lruLog orders processes by their last touch. Instead of a linked list,
// whose move-to-back writes two random neighbours per event, every touch
// appends (process, tick) and an entry whose tick is no longer its
// process's (touched again since) or whose process was dropped is stale and
// skipped. The log is compacted when stale entries outnumber live ones, so
// it stays within 2×processes+1024 entries and costs O(1) amortised.
type lruLog struct {
	q    []lruEntry
	head int
}

type lruEntry struct {
	p    *proc
	tick uint64
}

func (l *lruLog) push(p *proc, live int) {
	l.q = append(l.q, lruEntry{p: p, tick: p.tick})
	// The whole slice counts, the prefix oldest skipped included: a few
	// hot processes keep the part after head short, and the prefix would
	// otherwise grow without bound (TestLRULogBounded).
	if len(l.q) > 2*live+1024 {
		n := 0
		for _, e := range l.q[l.head:] {
			if !e.p.dead && e.p.tick == e.tick {
				l.q[n] = e
				n++
			}
		}
		clear(l.q[n:])
		l.q, l.head = l.q[:n], 0
	}
}

// oldest returns the least recently touched live process, or nil.
func (l *lruLog) oldest() *proc {
	for l.head < len(l.q) {
		if e := l.q[l.head]; !e.p.dead && e.p.tick == e.tick {
			return e.p
		}
		l.q[l.head] = lruEntry{}
		l.head++
	}
	return nil
}

// frame is one open call. Its correlation id is callID when the client
// gave one, else the CALL's id in text form; its parent and root are the
// frames below it, so neither is stored.
type frame struct {
	call     EventID
	callID   string
	module   string
	function string
	arity    uint32
	home     uint32 // the shard that stored the CALL: this one, or one it split from (D41)
	startNs  int64
}

func (c *Correlator) corrOf(f *frame) string {
	if f.callID != "" {
		return f.callID
	}
	return c.idText(f.call)
}

// touch returns e's process, creating it when new, and moves it to the
// most-recently-active end of the LRU.
func (c *Correlator) touch(e *Event, idx int) *proc {
	// A process found by warm that has not been dropped since is the live
	// one for this key (keys are unique among live processes and never
	// change); otherwise the table is asked again, as the process may have
	// been created by an earlier event of the batch.
	p := c.warmProcs[idx]
	if p == nil || p.dead {
		p = c.procs.getHashed(c.procHash[idx], e.Origin, e.PID)
	}
	if p == nil {
		p = c.newProc(e, idx)
	}
	p.tick = c.seq
	c.seq++
	p.lastActive = c.logTime
	c.lru.push(p, c.procs.len())
	c.markProc(p)
	return p
}

func (c *Correlator) newProc(e *Event, idx int) *proc {
	for c.procs.len() >= c.cfg.MaxProcesses {
		c.dropProc(c.lru.oldest(), AbandonProcessBound)
		c.cur.ProcessEvictions++
	}
	p := &proc{
		key:       Process{Origin: c.intern(e.Origin)},
		no:        c.nextProcNo,
		first:     e.ID,
		firstIdx:  idx,
		firstHome: c.cfg.Shard,
		born:      c.epoch,
	}
	p.setPID(e.PID)
	c.nextProcNo++
	c.procs.put(p)
	// A spawn notice that arrived before any event of this child links to
	// this, the child's first event.
	if c.spawns.order.n > 0 {
		if w := c.spawns.match(msgKey{recv: p.key}, Process{}); w != nil {
			c.linkSpawn(w.n, w.idxIn(c.epoch), e.ID, c.cfg.Shard, idx)
			c.removePending(&c.spawns, w)
		}
	}
	return p
}

// dropProc stops tracking p (reason: inactivity or the process bound).
// Its open frames can never be closed by an event any more, so they are
// closed here as ABANDONED, top first, at the current log time: the only
// clock the correlator has when no event is involved, and the same on
// every replica. Without this the store would show them open forever.
func (c *Correlator) dropProc(p *proc, reason AbandonReason) {
	for j := len(p.frames) - 1; j >= 0; j-- {
		c.closeFrame(&p.frames[j], ClosedFrame{Call: p.frames[j].call, Outcome: OutcomeAbandoned,
			EndNs: c.logTime, Reason: reason})
	}
	if reason == AbandonInactivity {
		c.cur.AbandonedInactivity += uint64(len(p.frames))
	} else {
		c.cur.AbandonedProcessBound += uint64(len(p.frames))
	}
	c.procs.del(p)
	p.dead = true // its lru entries are now stale
	p.frames = nil
	c.markProc(p)
}

// procRef is a dirty process with its record number at hand for sorting.
type procRef struct {
	no uint64
	p  *proc
}

// sortProcRefs sorts refs by record number, stably, and returns scratch
// (grown to len(refs)) for reuse. It is a least-significant-digit radix
// sort over the bytes in which the numbers differ (of no - min: usually two
// for a batch's processes), which costs a few passes over the slice where a
// comparison sort made ~n·log n indirect calls to its comparison function
// (measured: 10% of Apply).
func sortProcRefs(refs, scratch []procRef) []procRef {
	if len(refs) < 2 {
		return scratch
	}
	lo, hi := refs[0].no, refs[0].no
	for _, r := range refs[1:] {
		lo, hi = min(lo, r.no), max(hi, r.no)
	}
	scratch = slices.Grow(scratch[:0], len(refs))[:len(refs)]
	src, dst := refs, scratch
	for shift := uint(0); shift < 64 && (hi-lo)>>shift != 0; shift += 8 {
		var start [256]int
		for _, r := range src {
			start[byte((r.no-lo)>>shift)]++
		}
		sum := 0
		for i, n := range start {
			start[i], sum = sum, sum+n
		}
		for _, r := range src {
			d := byte((r.no - lo) >> shift)
			dst[start[d]] = r
			start[d]++
		}
		src, dst = dst, src
	}
	if &src[0] != &refs[0] {
		copy(refs, src)
	}
	return scratch
}

func (c *Correlator) markProc(p *proc) {
	if p.dirty != c.epoch {
		p.dirty = c.epoch
		c.dirtyProc = append(c.dirtyProc, procRef{no: p.no, p: p})
	}
}

// setParent gives a non-CALL event its process's current frame as parent
// and the bottom frame as root. While CALLs are being refused by the depth
// bound the current frame is unknown, so only the root is set.
func (c *Correlator) setParent(p *proc, e *Event) {
	if len(p.frames) == 0 {
		return
	}
	e.RootID = p.frames[0].call
	if p.overflow == 0 {
		e.ParentID = p.frames[len(p.frames)-1].call
	}
}

// call pushes a frame for a CALL (see doc.go, "Model").
func (c *Correlator) call(p *proc, e *Event) {
	if e.CallID != "" {
		e.CorrelationID = e.CallID
	} else {
		e.CorrelationID = c.idText(e.ID)
	}
	if p.overflow > 0 || len(p.frames) >= c.cfg.MaxStackDepth {
		// Refused: the caller frame is one of the untracked ones, so no
		// parent is claimed; the bound is counted. Only the number of
		// refused frames is kept (keeping their ids is the memory the
		// bound limits), so no RETURN can ever be matched to this CALL and
		// no later close could name it: it is closed now, as ABANDONED at
		// its own timestamp. A query then never shows it open, and the
		// stack it reports is the tracked frames.
		p.overflow++
		c.cur.StackOverflows++
		e.RootID = p.frames[0].call
		c.res.Closed = append(c.res.Closed, ClosedFrame{Call: e.ID, Outcome: OutcomeAbandoned,
			EndNs: e.TimestampNs, Reason: AbandonDepthBound})
		return
	}
	if n := len(p.frames); n > 0 {
		e.ParentID = p.frames[n-1].call
		e.RootID = p.frames[0].call
		c.addLink(e, Link{Type: LinkCalledFrom, Target: e.ParentID})
	} else {
		e.RootID = e.ID
	}
	module, function := c.internFunc(e.Module, e.Function)
	p.frames = append(p.frames, frame{
		call:     e.ID,
		callID:   strings.Clone(e.CallID),
		module:   module,
		function: function,
		arity:    e.Arity,
		home:     c.cfg.Shard,
		startNs:  e.TimestampNs,
	})
}

// complete closes the frame a RETURN or EXCEPTION belongs to: the one with
// its call_id; else, with module/function(/arity), the nearest matching
// frame from the top; else the top frame. Frames above the closed one are
// closed as UNWOUND. A RETURN that matches no frame is an orphan: stored,
// marked and counted, and the stack is left as it was.
func (c *Correlator) complete(p *proc, e *Event) {
	i := -1
	switch {
	case e.CallID != "":
		for j := len(p.frames) - 1; j >= 0; j-- {
			if p.frames[j].callID == e.CallID {
				i = j
				break
			}
		}
		if i >= 0 && p.overflow > 0 {
			// The refused frames above it end too; each was closed as
			// ABANDONED when it was refused.
			p.overflow = 0
		} else if i < 0 && p.overflow > 0 {
			p.overflow-- // most likely one of the refused frames
		}
	case p.overflow > 0:
		// The top frame is one of the refused ones: it cannot be matched
		// without misattributing the return to a tracked frame.
		p.overflow--
	case e.Module != "" || e.Function != "":
		for j := len(p.frames) - 1; j >= 0; j-- {
			f := &p.frames[j]
			if (e.Module == "" || f.module == e.Module) && (e.Function == "" || f.function == e.Function) &&
				(e.Arity == 0 || f.arity == e.Arity) {
				i = j
				break
			}
		}
	default:
		i = len(p.frames) - 1
	}
	if i < 0 {
		e.Orphan = true
		c.cur.Orphans++
		return
	}
	outcome := OutcomeOK
	if e.Kind == KindException {
		outcome = OutcomeException
	}
	for j := len(p.frames) - 1; j > i; j-- {
		c.closeFrame(&p.frames[j], ClosedFrame{Call: p.frames[j].call, Outcome: OutcomeUnwound,
			EndNs: e.TimestampNs, By: e.ID})
		c.cur.Unwound++
	}
	f := &p.frames[i]
	e.CorrelationID = c.corrOf(f)
	e.RootID = p.frames[0].call
	if i > 0 {
		e.ParentID = p.frames[i-1].call
	}
	e.DurationNs = e.TimestampNs - f.startNs
	e.Outcome = outcome
	if e.Module == "" && e.Function == "" {
		// A bare RETURN (ElixirScope's own) names the function it closes,
		// so that the event alone says whose duration it carries: the
		// store's per-function aggregates are derived from stored events
		// only and stay exact when retention deletes them one by one.
		e.Module, e.Function, e.Arity = f.module, f.function, f.arity
	}
	c.addLink(e, Link{Type: LinkCompletes, Target: f.call})
	clear(p.frames[i:])
	p.frames = p.frames[:i]
}

// exit closes every open frame of the process as PROCESS_EXIT.
func (c *Correlator) exit(p *proc, e *Event) {
	c.setParent(p, e)
	for j := len(p.frames) - 1; j >= 0; j-- {
		c.closeFrame(&p.frames[j], ClosedFrame{Call: p.frames[j].call, Outcome: OutcomeProcessExit,
			EndNs: e.TimestampNs, By: e.ID})
		c.cur.ExitClosed++
	}
	p.frames = nil
	p.overflow = 0
}

// closeFrame records how frame f ended without an event of
// its own. The record belongs with the frame's CALL: in this shard's
// Result when the CALL is stored here, else forwarded to the shard that
// stored it (a frame opened before a split, docs/DECISIONS.md D41).
func (c *Correlator) closeFrame(f *frame, cf ClosedFrame) {
	if f.home == c.cfg.Shard {
		c.res.Closed = append(c.res.Closed, cf)
		return
	}
	c.forward(Notice{Kind: NoticeFrameEnd, EventID: recordID(NoticeFrameEnd, cf.Call, 0, EventID{}), ToShard: f.home,
		TimestampNs: cf.EndNs, Frame: &cf})
}
