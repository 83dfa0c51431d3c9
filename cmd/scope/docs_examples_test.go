package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// The request and response examples of the docs are checked against the
// API: every JSON body a `curl` or `grpcurl` example sends decodes, field
// by field, into its method's request; every example that only reads (and
// every ingest) is sent to a running agent and must succeed; every JSON
// answer shown decodes into one of the API's responses or is a Connect
// error with a real code; and every error code the docs name exists and is
// produced by Scope's code.

// docRequest is one example request: the method it calls and its bodies
// (several for a client stream).
type docRequest struct {
	file, service, method string
	bodies                []string
}

var (
	// -d '...' up to the method's path: a curl or grpcurl example.
	docInlineBody = regexp.MustCompile(`(?s)-d '([^']*)'.*?(scope\.v1\.[A-Za-z]+Service)/([A-Za-z]+)`)
	// grpcurl -d @ ... Service/Method <<'EOF' ... EOF: a streamed body.
	docHeredocBody = regexp.MustCompile(`(?s)-d @ .*?(scope\.v1\.[A-Za-z]+Service)/([A-Za-z]+) <<'EOF'\n(.*?)\nEOF`)
	// A fenced block and its language: blocks are matched in order, so a
	// closing fence is never taken for an opening one.
	docFence = regexp.MustCompile("(?s)```([a-z]*)\n(.*?)```")
)

// docExamples returns the example requests of README.md and docs/*.md, in
// a stable order (file name, then position).
func docExamples(t *testing.T) []docRequest {
	t.Helper()
	docs := docFiles(t)
	files := slices.Sorted(func(yield func(string) bool) {
		for f := range docs {
			if !yield(f) {
				return
			}
		}
	})
	var out []docRequest
	for _, file := range files {
		for _, m := range docFence.FindAllStringSubmatch(docs[file], -1) {
			if m[1] != "sh" && m[1] != "" {
				continue
			}
			block := m[2]
			for _, r := range docInlineBody.FindAllStringSubmatch(block, -1) {
				out = append(out, docRequest{file: file, service: r[2], method: r[3], bodies: []string{r[1]}})
			}
			for _, r := range docHeredocBody.FindAllStringSubmatch(block, -1) {
				dec := json.NewDecoder(strings.NewReader(r[3]))
				req := docRequest{file: file, service: r[1], method: r[2]}
				for dec.More() {
					var raw json.RawMessage
					if err := dec.Decode(&raw); err != nil {
						t.Fatalf("%s: the %s/%s example's stream is not JSON: %v", file, r[1], r[2], err)
					}
					req.bodies = append(req.bodies, string(raw))
				}
				out = append(out, req)
			}
		}
	}
	return out
}

// methodOf finds a method of the API by service and name.
func methodOf(service, method string) (protoreflect.MethodDescriptor, error) {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return nil, err
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is no service", service)
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return nil, fmt.Errorf("%s has no method %s", service, method)
	}
	return md, nil
}

func newMessage(d protoreflect.MessageDescriptor) (proto.Message, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName())
	if err != nil {
		return nil, err
	}
	return mt.New().Interface(), nil
}

// sentLive says which documented methods the test calls for real: those
// without side effects beyond storing events (Join would dial the
// example's address, Leave would drain the agent) and not streaming.
func sentLive(md protoreflect.MethodDescriptor) bool {
	if md.IsStreamingClient() || md.IsStreamingServer() {
		return false
	}
	switch md.Parent().Name() {
	case "IngestService", "QueryService":
		return true
	}
	return slices.Contains([]protoreflect.Name{"Members", "Shards", "Keyring"}, md.Name())
}

// docsExamplesAreAccepted checks the docs' example requests: each decodes
// into its method's request, and each sentLive one succeeds against the
// agent at httpAddr (TestDocsAgainstAnAgent).
func docsExamplesAreAccepted(t *testing.T, httpAddr string) {
	examples := docExamples(t)
	if len(examples) < 8 {
		t.Fatalf("found %d example requests in the docs: the example format changed?", len(examples))
	}

	// Ingests first, so that the queries find what the docs ingested.
	slices.SortStableFunc(examples, func(x, y docRequest) int {
		return boolRank(x.service != "scope.v1.IngestService") - boolRank(y.service != "scope.v1.IngestService")
	})
	live := 0
	for _, ex := range examples {
		name := fmt.Sprintf("%s: %s/%s", ex.file, ex.service, ex.method)
		md, err := methodOf(ex.service, ex.method)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for _, body := range ex.bodies {
			msg, err := newMessage(md.Input())
			if err != nil {
				t.Fatal(err)
			}
			if err := protojson.Unmarshal([]byte(body), msg); err != nil {
				t.Errorf("%s: the example request does not decode into %s: %v\n%s", name, md.Input().FullName(), err, body)
				continue
			}
			if !sentLive(md) {
				continue
			}
			live++
			resp, err := http.Post("http://"+httpAddr+"/"+ex.service+"/"+ex.method, "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			answer, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s: the example request is answered %d: %s\n%s", name, resp.StatusCode, answer, body)
			}
		}
	}
	t.Logf("%d example requests decoded, %d sent to an agent", len(examples), live)
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestDocsJSONAnswersDecode: every ```json block of the docs is either an
// answer of the API (it decodes into one of the services' responses) or a
// Connect error body with a real code.
func TestDocsJSONAnswersDecode(t *testing.T) {
	var responses []protoreflect.MessageDescriptor
	for _, svc := range []string{"scope.v1.IngestService", "scope.v1.QueryService", "scope.v1.ClusterService"} {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
		if err != nil {
			t.Fatal(err)
		}
		methods := d.(protoreflect.ServiceDescriptor).Methods()
		for i := range methods.Len() {
			responses = append(responses, methods.Get(i).Output())
		}
	}
	blocks := 0
	for file, text := range docFiles(t) {
		for _, m := range docFence.FindAllStringSubmatch(text, -1) {
			if m[1] != "json" {
				continue
			}
			blocks++
			body := []byte(m[2])
			var errBody struct{ Code, Message string }
			if json.Unmarshal(body, &errBody) == nil && errBody.Code != "" {
				var code connect.Code
				if err := code.UnmarshalText([]byte(errBody.Code)); err != nil || errBody.Message == "" {
					t.Errorf("%s: an error body with code %q and message %q: not a Connect error (%v)", file, errBody.Code, errBody.Message, err)
				}
				continue
			}
			decoded := false
			for _, d := range responses {
				msg, err := newMessage(d)
				if err != nil {
					t.Fatal(err)
				}
				if protojson.Unmarshal(bytes.TrimSpace(body), msg) == nil {
					decoded = true
					break
				}
			}
			if !decoded {
				t.Errorf("%s: a JSON answer that is no response of the API:\n%s", file, body)
			}
		}
	}
	if blocks == 0 {
		t.Fatal("no ```json block in the docs: the format changed?")
	}
}

// docErrorCode matches a gRPC code name in backquotes.
var docErrorCode = regexp.MustCompile("`([A-Z]+(?:_[A-Z]+)*)`")

// TestDocsNameRealErrorCodes: every code of the error table in
// docs/API.md is a Connect code that some non-test Go file of Scope
// produces (connect.CodeX), so a documented code nothing returns fails.
func TestDocsNameRealErrorCodes(t *testing.T) {
	api := docFiles(t)["docs/API.md"]
	_, table, ok := strings.Cut(api, "\n## Errors\n")
	if !ok {
		t.Fatal("docs/API.md has no Errors section")
	}
	if i := strings.Index(table, "\n## "); i >= 0 {
		table = table[:i]
	}
	var src strings.Builder
	err := filepath.WalkDir("../..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "gen" || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".")) && path != "../.." {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			src.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	codes := 0
	for _, row := range strings.Split(table, "\n") {
		if !strings.HasPrefix(row, "| `") {
			continue
		}
		m := docErrorCode.FindStringSubmatch(row)
		if m == nil {
			continue
		}
		codes++
		var code connect.Code
		if err := code.UnmarshalText([]byte(strings.ToLower(m[1]))); err != nil {
			t.Errorf("docs/API.md documents the error code %s, which is no Connect code", m[1])
			continue
		}
		camel := ""
		for _, w := range strings.Split(strings.ToLower(m[1]), "_") {
			camel += strings.ToUpper(w[:1]) + w[1:]
		}
		if !strings.Contains(src.String(), "connect.Code"+camel) {
			t.Errorf("docs/API.md documents the error code %s, which no Go file of Scope returns (connect.Code%s)", m[1], camel)
		}
	}
	if codes < 5 {
		t.Fatalf("found %d codes in docs/API.md's error table: the format changed?", codes)
	}
	_ = scopev1.Kind_KIND_CALL // the generated types register the API's descriptors
}
