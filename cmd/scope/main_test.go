package main

import (
	"bytes"
	"strings"
	"testing"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

func TestRunDispatch(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		wantStdout string
		wantStderr string
	}{
		{nil, 2, "", "usage: scope"},
		{[]string{"help"}, 0, "version", ""},
		{[]string{"help", "tree"}, 0, "", "usage: scope tree"},
		{[]string{"help", "nope"}, 2, "", `unknown command "nope"`},
		{[]string{"version"}, 0, "scope ", ""},
		{[]string{"version", "-h"}, 0, "", "usage: scope version"},
		{[]string{"nope"}, 2, "", `unknown command "nope"`},
	} {
		var out, errOut bytes.Buffer
		if code := run(tc.args, &out, &errOut); code != tc.code {
			t.Errorf("run(%q) = %d, want %d", tc.args, code, tc.code)
		}
		if !strings.Contains(out.String(), tc.wantStdout) || !strings.Contains(errOut.String(), tc.wantStderr) {
			t.Errorf("run(%q): stdout %q, stderr %q", tc.args, out.String(), errOut.String())
		}
	}
}

// TestPrintEventDetail: scope get prints the fields an event has, one a
// line, aligned, and leaves out the empty ones.
func TestPrintEventDetail(t *testing.T) {
	var out bytes.Buffer
	e := &scopev1.Event{EventId: "01JB8Z6Y2K3M4N5P6Q7R8S9T92", Origin: "app1@host", Pid: "<0.1.0>",
		Kind: scopev1.Kind_KIND_SEND, TimestampNs: 1730000000000500000, PeerOrigin: "app2@host", PeerPid: "<0.9.0>",
		Payload: "hello", PayloadTruncated: true, PayloadSize: 9000, Attributes: map[string]string{"b": "2", "a": "1"},
		Links: []*scopev1.Link{{Type: scopev1.LinkType_LINK_TYPE_DELIVERED_TO, TargetEventId: "01JB8Z6Y2K3M4N5P6Q7R8S9T93"}}, Shard: 3}
	if err := printEventDetail(&out, e); err != nil {
		t.Fatal(err)
	}
	want := `ID         01JB8Z6Y2K3M4N5P6Q7R8S9T92
KIND       SEND
PROCESS    app1@host/<0.1.0>
TIME       2024-10-27T03:33:20.000500Z (1730000000000500000)
PEER       app2@host/<0.9.0>
PAYLOAD    hello  (truncated: 9000 bytes in all)
ATTRIBUTE  a=1
ATTRIBUTE  b=2
LINK       DELIVERED_TO 01JB8Z6Y2K3M4N5P6Q7R8S9T93
SHARD      3
`
	if out.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", out.String(), want)
	}
}
