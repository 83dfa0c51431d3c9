package main

import (
	"bytes"
	"strings"
	"testing"
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
