package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The documentation is checked against the code it describes: every
// metric, agent flag and CLI command README.md and docs/*.md name must
// exist. Docs that drift from the code fail CI here.

// docFiles returns README.md and docs/*.md (and docs/bench/*.md), by path.
func docFiles(t *testing.T) map[string]string {
	t.Helper()
	paths := []string{"../../README.md"}
	for _, glob := range []string{"../../docs/*.md", "../../docs/bench/*.md"} {
		m, err := filepath.Glob(glob)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, m...)
	}
	out := make(map[string]string, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimPrefix(p, "../../")] = string(b)
	}
	return out
}

// docMetric matches the names in backquotes that look like Scope metrics:
// scope_<family>_..., family being one the agent exports (so that
// `scope_tracer`, an Erlang module, is not taken for one).
var docMetric = regexp.MustCompile("`(scope_[a-zA-Z0-9_]+)")

// TestDocsAgainstAnAgent starts a one-node cluster agent and checks the
// docs against it: the metrics they name (docsNameRealMetrics), then the
// example requests they show (docsExamplesAreAccepted).
func TestDocsAgainstAnAgent(t *testing.T) {
	httpAddr := freeAddr(t)
	a := spawnAgent(t, httpAddr, []string{"agent", "-name", "n1", "-data-dir", filepath.Join(t.TempDir(), "n1"),
		"-http", httpAddr, "-raft", freeAddr(t), "-gossip", freeAddr(t), "-bootstrap-expect", "1", "-replicas", "1",
		"-shards", "2"})
	a.waitReady(t)
	t.Run("metrics", func(t *testing.T) { docsNameRealMetrics(t, httpAddr) })
	t.Run("examples", func(t *testing.T) { docsExamplesAreAccepted(t, httpAddr) })
}

// docsNameRealMetrics ingests and queries once, and checks that every
// metric the docs name (and every metric the Grafana dashboard queries) is
// exported.
func docsNameRealMetrics(t *testing.T, httpAddr string) {
	mustScope(t, `{"origin":"docs@h","pid":"<0.1.0>","kind":"KIND_CALL","timestampNs":"1","module":"m","function":"f"}`+"\n",
		"ingest", "-durability", "committed", "-addr", httpAddr)
	mustScope(t, "", "query", "-origin", "docs@h", "-addr", httpAddr)
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	families := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (scope_[a-zA-Z0-9_]+) `).FindAllStringSubmatch(string(body), -1) {
		exported[m[1]] = true
		families[strings.SplitN(m[1], "_", 3)[1]] = true
	}
	if len(exported) < 20 {
		t.Fatalf("the agent exports only %d scope_ metrics:\n%s", len(exported), body)
	}
	// The Grafana dashboard: every metric its queries name must exist.
	dashboards, err := filepath.Glob("../../docs/grafana/*.json")
	if err != nil || len(dashboards) == 0 {
		t.Fatalf("no dashboard in docs/grafana (%v)", err)
	}
	for _, path := range dashboards {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var dash struct {
			Panels []struct {
				Title   string
				Targets []struct{ Expr string }
			}
		}
		if err := json.Unmarshal(b, &dash); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		queries := 0
		for _, p := range dash.Panels {
			for _, q := range p.Targets {
				queries++
				for _, name := range regexp.MustCompile(`scope_[a-zA-Z0-9_]+`).FindAllString(q.Expr, -1) {
					base := name
					for _, suffix := range []string{"_bucket", "_sum", "_count"} {
						if b, ok := strings.CutSuffix(name, suffix); ok && exported[b] {
							base = b
						}
					}
					if !exported[base] {
						t.Errorf("%s, panel %q: %s names %s, which a fresh agent does not export", path, p.Title, q.Expr, name)
					}
				}
			}
		}
		if queries == 0 {
			t.Errorf("%s: no query found (the dashboard format changed?)", path)
		}
	}

	for file, text := range docFiles(t) {
		for _, m := range docMetric.FindAllStringSubmatch(text, -1) {
			name := m[1]
			parts := strings.SplitN(name, "_", 3)
			if len(parts) < 3 || !families[parts[1]] || strings.HasSuffix(name, "_") {
				continue // not a metric (scope_tracer, ...), or a prefix (scope_raft_*)
			}
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suffix); ok && exported[b] {
					base = b
				}
			}
			if !exported[base] {
				t.Errorf("%s names the metric %s, which a fresh agent does not export", file, name)
			}
		}
	}
}

// docFlagRow is a flag table row of OPERATIONS.md: | `-flag` | default | ...
var docFlagRow = regexp.MustCompile("(?m)^\\| `(-[a-z][a-z0-9-]*)`(?:, `(-[a-z][a-z0-9-]*)`)?")

// TestDocsNameRealFlags checks every flag of the agent's flag tables in
// docs/OPERATIONS.md against `scope agent -h`, and every `scope CMD` the
// docs show against `scope help`.
func TestDocsNameRealFlags(t *testing.T) {
	_, help, _ := scope(t, "", "agent", "-h")
	docs := docFiles(t)
	ops := docs["docs/OPERATIONS.md"]
	rows := docFlagRow.FindAllStringSubmatch(ops, -1)
	if len(rows) < 20 {
		t.Fatalf("found %d flag rows in docs/OPERATIONS.md: the table format changed?", len(rows))
	}
	for _, r := range rows {
		for _, flag := range r[1:] {
			if flag != "" && !strings.Contains(help, "\n  "+flag+" ") && !strings.Contains(help, "\n  "+flag+"\n") {
				t.Errorf("docs/OPERATIONS.md documents %s, which `scope agent -h` does not list", flag)
			}
		}
	}

	known := append([]string{"help"}, allCommands()...)
	// A command is `scope CMD` or `./bin/scope CMD` at the start of a line
	// or after a separator, outside shell comments.
	cmdRef := regexp.MustCompile(`(?m)(?:^|[\s|(;&])(?:\./bin/)?scope ([a-z][a-z-]+)`)
	comment := regexp.MustCompile(`(?m)(?:^|\s)#.*$`)
	shown := 0
	for file, text := range docs {
		for _, block := range codeSpans(text) {
			for _, m := range cmdRef.FindAllStringSubmatch(comment.ReplaceAllString(block, ""), -1) {
				shown++
				if !slices.Contains(known, m[1]) {
					t.Errorf("%s shows `scope %s`, which is no command", file, m[1])
				}
			}
		}
	}
	t.Logf("%d flag rows and %d commands shown checked", len(rows), shown)
}

// allCommands are the names `scope help` lists.
func allCommands() []string {
	var out []string
	for _, c := range commands {
		out = append(out, c.name)
	}
	return out
}

// codeSpans returns the contents of a markdown text's code blocks and
// inline code spans: where commands are shown, as opposed to prose.
func codeSpans(text string) []string {
	var out []string
	for _, m := range regexp.MustCompile("(?s)```[a-z]*\n(.*?)```").FindAllStringSubmatch(text, -1) {
		out = append(out, m[1])
	}
	for _, m := range regexp.MustCompile("`([^`\n]+)`").FindAllStringSubmatch(text, -1) {
		out = append(out, m[1])
	}
	return out
}
