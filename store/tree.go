package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/cockroachdb/pebble/v2"
	"github.com/elixirscope/scope/correlate"
)

// Frame is one function call: its CALL event and how (and whether) it was
// closed, as far as the shard has stored it.
type Frame struct {
	Call correlate.Event
	// End is the RETURN or EXCEPTION that closed the frame, if any.
	End *correlate.Event
	// Outcome is OUTCOME_UNSPECIFIED while the frame is open.
	Outcome correlate.Outcome
	// AbandonReason says why an ABANDONED frame was abandoned (unspecified
	// for every other outcome).
	AbandonReason correlate.AbandonReason
	EndNs         int64             // when it closed (0 while open)
	ClosedBy      correlate.EventID // the closing event (End, or the RETURN/EXIT that unwound it); zero when ABANDONED
	DurationNs    int64
	Children      []*Frame // CallTree only, in (timestamp, id) order
}

// Open reports whether the frame has not been closed.
func (f *Frame) Open() bool { return f.Outcome == correlate.OutcomeUnspecified }

// CallTree is the tree of frames under one root CALL.
type CallTree struct {
	Root   *Frame
	Frames int // frames in the tree
	// Truncated: the tree has more frames than maxFrames (or than one call
	// may scan); frames beyond the bound are left out.
	Truncated bool
}

// frameEnd is a frame record: a frame closed without an event of its own
// (UNWOUND, PROCESS_EXIT, ABANDONED), keyed by its CALL.
type frameEnd struct {
	outcome correlate.Outcome
	endNs   int64
	by      correlate.EventID
	reason  correlate.AbandonReason // ABANDONED only
}

// A frame record is outcome (1), end ts (8, flipped), by (16), then, for
// an ABANDONED frame only, the reason (1). Records without a reason keep
// the original 25-byte form, so stores written before ABANDONED existed
// read unchanged and their UNWOUND/PROCESS_EXIT records stay readable by
// the builds that wrote them.
const frameEndLen = 1 + 8 + idLen

func (f frameEnd) append(b []byte) []byte {
	b = append(b, byte(f.outcome))
	b = binary.BigEndian.AppendUint64(b, flip(f.endNs))
	b = append(b, f.by[:]...)
	if f.reason != correlate.AbandonUnspecified {
		b = append(b, byte(f.reason))
	}
	return b
}

func decodeFrameEnd(k, v []byte) (frameEnd, error) {
	if len(v) != frameEndLen && len(v) != frameEndLen+1 {
		return frameEnd{}, corruptKey(k, "frame record of %d bytes", len(v))
	}
	f := frameEnd{outcome: correlate.Outcome(v[0]), endNs: unflip(binary.BigEndian.Uint64(v[1:]))}
	copy(f.by[:], v[9:frameEndLen])
	if len(v) > frameEndLen {
		f.reason = correlate.AbandonReason(v[frameEndLen])
	}
	return f, nil
}

// frameEnd reads the frame record of call (stored in the call's bucket).
func (v *view) frameEnd(call *correlate.Event) (frameEnd, bool, error) {
	k := frameKey(nil, v.shard, bucketOf(call.TimestampNs, v.s.shift), call.ID)
	val, closer, err := v.snap.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return frameEnd{}, false, nil
	}
	if err != nil {
		return frameEnd{}, false, err
	}
	defer closer.Close()
	f, err := decodeFrameEnd(k, val)
	return f, err == nil, err
}

// completes returns the CALL a RETURN/EXCEPTION closes (its COMPLETES link).
func completes(e *correlate.Event) (correlate.EventID, bool) {
	for _, l := range e.Links {
		if l.Type == correlate.LinkCompletes {
			return l.Target, true
		}
	}
	return correlate.EventID{}, false
}

func closes(k correlate.Kind) bool { return k == correlate.KindReturn || k == correlate.KindException }

// refused reports whether CALL e was refused a frame by the correlator's
// depth bound: the only CALL with a root but no parent that is not its own
// root (a tracked CALL has a parent, or is the root of its tree).
func refused(e *correlate.Event) bool {
	return e.ParentID == (correlate.EventID{}) && e.RootID != e.ID && e.RootID != (correlate.EventID{})
}

// CloseWith closes f with end, the RETURN or EXCEPTION that completes its
// CALL, as CallTree does (a caller that merges the parts of a tree stored
// on several shards closes frames the same way).
func (f *Frame) CloseWith(end *correlate.Event) {
	f.End, f.EndNs, f.ClosedBy = end, end.TimestampNs, end.ID
	f.Outcome = end.Outcome
	if f.Outcome == correlate.OutcomeUnspecified {
		f.Outcome = correlate.OutcomeOK
		if end.Kind == correlate.KindException {
			f.Outcome = correlate.OutcomeException
		}
	}
	f.DurationNs = end.DurationNs
	if f.DurationNs == 0 {
		f.DurationNs = end.TimestampNs - f.Call.TimestampNs
	}
}

// close fills f's end from its end event or its frame record.
func (v *view) closeFrame(f *Frame, end *correlate.Event) error {
	if end != nil {
		f.CloseWith(end)
		return nil
	}
	fe, ok, err := v.frameEnd(&f.Call)
	if err != nil || !ok {
		return err
	}
	f.Outcome, f.EndNs, f.ClosedBy, f.AbandonReason = fe.outcome, fe.endNs, fe.by, fe.reason
	// An ABANDONED frame's end may be log time (the leader's clock), not
	// the origin's: never report a negative duration from clock skew.
	f.DurationNs = max(0, fe.endNs-f.Call.TimestampNs)
	return nil
}

// CallTree returns the frames under root (a CALL stored on the shard): the
// events whose RootID is root, read through the root index, at most
// maxFrames frames (bounded by Options.MaxTreeFrames).
func (s *Store) CallTree(shard uint32, root correlate.EventID, maxFrames int) (*CallTree, error) {
	if maxFrames < 1 || maxFrames > s.opts.MaxTreeFrames {
		return nil, fmt.Errorf("%w: maxFrames %d: must be within [1, %d]", ErrInvalidQuery, maxFrames, s.opts.MaxTreeFrames)
	}
	v, err := s.newView(shard)
	if err != nil {
		return nil, err
	}
	defer v.close()
	re, err := v.get(root)
	if err != nil {
		return nil, err
	}
	if re.Kind != correlate.KindCall {
		return nil, fmt.Errorf("%w: root %s is a %s, not a CALL", ErrInvalidQuery, root, re.Kind)
	}
	t := &CallTree{Root: &Frame{Call: re}, Frames: 1}
	frames := map[correlate.EventID]*Frame{root: t.Root}
	order := []*Frame{t.Root}
	ends := map[correlate.EventID]*correlate.Event{}
	sp := scanSpec{sec: secRoot, group: append([]byte(nil), root[:]...), from: math.MinInt64, to: math.MaxInt64}
	r, err := v.scan(sp, func(b uint64, ts int64, id correlate.EventID, _ []byte) (bool, error) {
		if id == root {
			return false, nil
		}
		var e correlate.Event
		if ok, err := v.event(b, ts, id, &e); err != nil || !ok {
			if err == nil {
				err = corruptKey(eventKey(nil, v.shard, b, ts, id), "index entry without its event")
			}
			return false, err
		}
		switch {
		case e.Kind == correlate.KindCall:
			if len(frames) >= maxFrames {
				t.Truncated = true
				return false, nil
			}
			f := &Frame{Call: e}
			frames[id], order = f, append(order, f)
		case closes(e.Kind):
			links, err := v.links(b, id)
			if err != nil {
				return false, err
			}
			e.Links = links
			if call, ok := completes(&e); ok {
				ends[call] = &e
			}
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	if r.exhausted {
		t.Truncated = true
	}
	for _, f := range order {
		if err := v.closeFrame(f, ends[f.Call.ID]); err != nil {
			return nil, err
		}
		if f == t.Root {
			continue
		}
		if p, ok := frames[f.Call.ParentID]; ok {
			p.Children = append(p.Children, f)
			t.Frames++
		}
	}
	return t, nil
}

// CallStackAt returns the frames of process p open at time tNs, bottom
// first. It walks p's events backwards from tNs until it finds the topmost
// open frame (or proof that none is open: an EXIT, or the close of a
// bottom frame), then follows ParentID links down to the bottom.
//
// What the walk skips, and why: an orphan RETURN/EXCEPTION closed nothing
// (it has no parent, like the close of a bottom frame, and must not be
// taken for one); a CALL refused by the correlator's depth bound was never
// a tracked frame (no parent, not the root; the correlator closes it as
// ABANDONED when it refuses it); a CALL whose frame record ends at or
// before tNs (UNWOUND, PROCESS_EXIT, ABANDONED) is closed. So the stack is
// the tracked frames, as the correlator kept them.
func (s *Store) CallStackAt(shard uint32, p correlate.Process, tNs int64) ([]Frame, error) {
	v, err := s.newView(shard)
	if err != nil {
		return nil, err
	}
	defer v.close()
	closed := map[correlate.EventID]bool{}
	var top *correlate.Event
	sp := scanSpec{sec: secProcess, group: processGroup(nil, p), from: math.MinInt64, to: tNs, desc: true}
	r, err := v.scan(sp, func(b uint64, ts int64, id correlate.EventID, _ []byte) (bool, error) {
		var e correlate.Event
		if ok, err := v.event(b, ts, id, &e); err != nil || !ok {
			if err == nil {
				err = corruptKey(eventKey(nil, v.shard, b, ts, id), "index entry without its event")
			}
			return false, err
		}
		switch {
		case e.Kind == correlate.KindExit:
			return true, nil // an exit closed every frame open before it
		case closes(e.Kind) && e.Orphan:
			return false, nil // closed nothing
		case closes(e.Kind):
			if e.ParentID == (correlate.EventID{}) {
				return true, nil // the bottom frame closed here
			}
			links, err := v.links(b, id)
			if err != nil {
				return false, err
			}
			e.Links = links
			if call, ok := completes(&e); ok {
				closed[call] = true
			}
		case e.Kind == correlate.KindCall && refused(&e):
			return false, nil
		case e.Kind == correlate.KindCall && !closed[id]:
			fe, ok, err := v.frameEnd(&e)
			if err != nil {
				return false, err
			}
			if ok && fe.endNs <= tNs {
				return false, nil // unwound or exited before tNs
			}
			top = &e
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	if top == nil {
		if r.exhausted {
			return nil, fmt.Errorf("%w: call stack of %s at %d", ErrScanLimit, p, tNs)
		}
		return nil, nil
	}
	var stack []Frame
	for e := top; ; {
		f := Frame{Call: *e}
		stack = append(stack, f)
		if e.ParentID == (correlate.EventID{}) || len(stack) >= s.opts.MaxTreeFrames {
			break
		}
		parent, err := v.get(e.ParentID)
		if errors.Is(err, ErrNotFound) {
			break // deleted by retention: the stack is known down to here
		}
		if err != nil {
			return nil, err
		}
		e = &parent
	}
	for i, j := 0, len(stack)-1; i < j; i, j = i+1, j-1 {
		stack[i], stack[j] = stack[j], stack[i]
	}
	return stack, nil
}

// StateAt returns the latest STATE_CHANGE of process p at or before tNs.
func (s *Store) StateAt(shard uint32, p correlate.Process, tNs int64) (correlate.Event, bool, error) {
	v, err := s.newView(shard)
	if err != nil {
		return correlate.Event{}, false, err
	}
	defer v.close()
	q := Query{Process: &p, Kinds: []correlate.Kind{correlate.KindStateChange},
		FromNs: math.MinInt64, ToNs: tNs, Descending: true, Limit: 1}
	page, err := v.events(&q)
	if err != nil || len(page.Events) == 0 {
		return correlate.Event{}, false, err
	}
	return page.Events[0], true, nil
}
