package rpc

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/protobuf/proto"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/store"
)

// An Events cursor is the position (timestamp, event id) of the last event
// a page covered, plus a hash of the filter it was made for. Every shard
// resumes strictly after the position, so pages neither repeat nor skip
// events. It is opaque to clients: base64url of
//
//	version(1) | descending(1) | timestamp(8, big-endian) | id(16) | filter hash(8)
const (
	cursorVersion = 1
	cursorLen     = 1 + 1 + 8 + 16 + 8
)

// filterHash hashes the fields a cursor must be used with unchanged. Page
// size, consistency and allow_partial may change between pages.
func filterHash(req *scopev1.EventsRequest) uint64 {
	c := proto.CloneOf(req)
	c.Cursor, c.Limit, c.AllowPartial, c.Consistency = "", 0, false, scopev1.Consistency_CONSISTENCY_UNSPECIFIED
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		// Marshalling a message we hold cannot fail; a hash of nothing
		// would make every cursor match, so fail loudly instead.
		panic(fmt.Sprintf("rpc: marshal EventsRequest: %v", err))
	}
	return xxhash.Sum64(b)
}

func encodeCursor(pos store.Position, req *scopev1.EventsRequest) string {
	b := make([]byte, 0, cursorLen)
	b = append(b, cursorVersion)
	if req.GetDescending() {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(pos.TimestampNs))
	b = append(b, pos.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, filterHash(req))
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string, req *scopev1.EventsRequest) (store.Position, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != cursorLen || b[0] != cursorVersion || b[1] > 1 {
		return store.Position{}, fmt.Errorf("%w: cursor %q: not a cursor this server made", ErrCursor, clip(s))
	}
	if (b[1] == 1) != req.GetDescending() || binary.BigEndian.Uint64(b[26:]) != filterHash(req) {
		return store.Position{}, fmt.Errorf("%w: cursor: made for a different filter or order; "+
			"every field but limit, consistency and allow_partial must equal the first page's request", ErrCursor)
	}
	var pos store.Position
	pos.TimestampNs = int64(binary.BigEndian.Uint64(b[2:]))
	copy(pos.ID[:], b[10:26])
	return pos, nil
}
