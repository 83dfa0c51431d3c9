package clustertest

import (
	"fmt"
	"strings"
	"testing"
)

func TestLogTailKeepsTheLastLines(t *testing.T) {
	var l logTail
	for i := range logTailLines + 5 {
		fmt.Fprintf(&l, "line %d\n", i)
	}
	got := strings.Split(strings.TrimSuffix(l.String(), "\n"), "\n")
	if got[0] != "(5 earlier lines not kept)" {
		t.Fatalf("first line %q", got[0])
	}
	if got[1] != "line 5" || got[len(got)-1] != fmt.Sprintf("line %d", logTailLines+4) || len(got) != logTailLines+1 {
		t.Fatalf("kept %d lines, %q .. %q", len(got), got[1], got[len(got)-1])
	}
	var short logTail
	fmt.Fprint(&short, "a\nb\n")
	if s := short.String(); s != "a\nb\n" {
		t.Fatalf("short tail %q", s)
	}
}
