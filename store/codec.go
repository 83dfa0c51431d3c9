package store

import (
	"fmt"

	"github.com/elixirscope/scope/correlate"
)

// encodeEvent appends the primary record value of e. Links are not part of
// it: they are stored as edge records (so that linking never rewrites an
// event) and Get fills them back in.
func encodeEvent(dst []byte, e *correlate.Event, shard uint32) []byte {
	c := *e
	c.Links = nil
	c.Shard = shard
	return correlate.AppendEvent(dst, &c)
}

// decodeEvent decodes the primary record stored at key k.
func decodeEvent(k, v []byte, e *correlate.Event) error {
	if err := correlate.DecodeEvent(v, e); err != nil {
		return fmt.Errorf("%w: key %x: %w", ErrCorrupt, k, err)
	}
	return nil
}
