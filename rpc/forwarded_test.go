package rpc

import (
	"context"
	"net/http"
	"testing"

	"github.com/elixirscope/scope/node"
)

// TestForwardedContext: the forwarding headers mark the request's context;
// a redirect mark counts only on a forwarded request (a client cannot
// skip the disk guard by setting it).
func TestForwardedContext(t *testing.T) {
	for _, tc := range []struct {
		forwarded, redirected    string
		wantNoForward, wantRedir bool
	}{
		{"", "", false, false},
		{"n1", "", true, false},
		{"n1", "1", true, true},
		{"", "1", false, false},
	} {
		h := http.Header{}
		if tc.forwarded != "" {
			h.Set(ForwardedHeader, tc.forwarded)
		}
		if tc.redirected != "" {
			h.Set(RedirectedHeader, tc.redirected)
		}
		ctx := forwardedContext(context.Background(), h)
		if got := node.IsRedirect(ctx); got != tc.wantRedir {
			t.Errorf("headers %v: redirect %v, want %v", h, got, tc.wantRedir)
		}
	}
}
