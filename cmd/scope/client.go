package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/tlsconf"
)

// defaultAddr is the agent's default public HTTP address (docs/OPERATIONS.md).
const defaultAddr = "127.0.0.1:7070"

// Exit codes of every command.
const (
	exitOK    = 0
	exitError = 1 // the command ran and failed (server error, I/O error)
	exitUsage = 2 // bad flags or arguments
)

// usageError wraps a message so that errors.Is(err, errUsage) holds.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name, args string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: scope %s [flags] %s\n\nflags:\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args; ok is false when the command must exit with code.
// Flags may follow positional arguments (`scope tree <id> -addr x`): the
// positionals are collected and left in fs.Args().
//
// -h prints the command's usage and flags; a bad flag prints the error and
// one line saying how to see them, not the whole listing.
func parseFlags(fs *flag.FlagSet, args []string) (code int, ok bool) {
	usage := fs.Usage
	fs.Usage = func() {} // the flag package calls it on -h and on errors alike
	defer func() { fs.Usage = usage }()
	var positional []string
	for {
		switch err := fs.Parse(args); {
		case errors.Is(err, flag.ErrHelp):
			usage()
			return exitOK, false
		case err != nil:
			flagHint(fs)
			return exitUsage, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			positional = append(positional, rest...) // after "--": all positional
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	// Leave the positionals in fs.Args(); "--" ends flag parsing.
	if err := fs.Parse(append([]string{"--"}, positional...)); err != nil {
		return exitUsage, false
	}
	return exitOK, true
}

// flagHint tells, after a usage error, how to list the command's flags.
func flagHint(fs *flag.FlagSet) {
	fmt.Fprintf(fs.Output(), "run 'scope %s -h' for its flags\n", fs.Name())
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) (set bool) {
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// clientFlags are the flags every client command shares.
type clientFlags struct {
	addr    string
	json    bool
	timeout time.Duration
	// TLS (-ca, -cert, -key; SCOPE_CA, SCOPE_CERT, SCOPE_KEY): with -ca
	// a host:port address means https://.
	ca, cert, key string
	token         string // -token, else $SCOPE_TOKEN
}

// tokenEnv names the environment variable holding the client's token
// when -token is not given (so that it stays out of shell history and ps).
const tokenEnv = "SCOPE_TOKEN"

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", defaultAddr, "a node's HTTP address (host:port, http://host:port or https://host:port; host:port is https with -ca)")
	fs.StringVar(&c.ca, "ca", os.Getenv("SCOPE_CA"), "PEM CA certificate verifying the node (its -tls-ca); implies https (env SCOPE_CA)")
	fs.StringVar(&c.cert, "cert", os.Getenv("SCOPE_CERT"), "PEM client certificate (scope cert client), for nodes run with -tls-client-auth (env SCOPE_CERT)")
	fs.StringVar(&c.key, "key", os.Getenv("SCOPE_KEY"), "PEM private key of -cert (env SCOPE_KEY)")
	fs.BoolVar(&c.json, "json", false, "print responses as proto3 JSON, one message per line")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "deadline of each request (0: none)")
	fs.StringVar(&c.token, "token", "", "bearer token sent to the node (default: $"+tokenEnv+"); `scope token new` makes one")
}

// bearer returns the token to send: -token, else $SCOPE_TOKEN.
func (c *clientFlags) bearer() string {
	if c.token != "" {
		return c.token
	}
	return strings.TrimSpace(os.Getenv(tokenEnv))
}

// bearerTransport adds `Authorization: Bearer TOKEN` to every request.
type bearerTransport struct {
	token string
	base  http.RoundTripper
}

func (t bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+t.token)
	return t.base.RoundTrip(r)
}

// baseURL turns -addr into the base URL of the Connect services.
func (c *clientFlags) baseURL() (string, error) {
	addr := strings.TrimRight(c.addr, "/")
	switch {
	case addr == "":
		return "", usageError("-addr: required")
	case strings.HasPrefix(addr, "https://"), strings.HasPrefix(addr, "http://"):
		return addr, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", usageError("-addr %q: want host:port, http://host:port or https://host:port", c.addr)
	}
	if c.ca != "" || c.cert != "" {
		return "https://" + addr, nil
	}
	return "http://" + addr, nil
}

// newHTTPClient returns an HTTP client speaking HTTP/2: over TLS (ALPN)
// when tlsCfg is set, else without TLS (h2c, prior knowledge: the agent
// serves gRPC on the same port, so h2c is always available). HTTP/2 lets
// one connection carry many concurrent streams.
func newHTTPClient(tlsCfg *tls.Config) *http.Client {
	t := &http.Transport{
		Protocols:           new(http.Protocols),
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	if tlsCfg != nil {
		t.TLSClientConfig = tlsCfg
		t.Protocols.SetHTTP2(true)
		t.Protocols.SetHTTP1(true)
	} else {
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	return &http.Client{Transport: t}
}

// tlsConfig is the client's TLS configuration for base (nil for http://).
func (c *clientFlags) tlsConfig(base string) (*tls.Config, error) {
	if !strings.HasPrefix(base, "https://") {
		if c.cert != "" {
			return nil, usageError("-cert: the address %q is not https", base)
		}
		return nil, nil
	}
	cfg, err := tlsconf.ClientConfig(c.ca, c.cert, c.key)
	if err != nil {
		return nil, usageError("%s", strings.TrimPrefix(err.Error(), tlsconf.ErrCert.Error()+": "))
	}
	return cfg, nil
}

// api holds the three service clients of one node.
type api struct {
	hc      *http.Client // shared by the three; CloseIdleConnections when done
	ingest  scopev1connect.IngestServiceClient
	query   scopev1connect.QueryServiceClient
	cluster scopev1connect.ClusterServiceClient
}

func (c *clientFlags) dial() (*api, error) {
	base, err := c.baseURL()
	if err != nil {
		return nil, err
	}
	tlsCfg, err := c.tlsConfig(base)
	if err != nil {
		return nil, err
	}
	hc := newHTTPClient(tlsCfg)
	if tok := c.bearer(); tok != "" {
		hc.Transport = bearerTransport{token: tok, base: hc.Transport}
	}
	// No gzip: the CLI talks to a node on the same machine or LAN, where
	// compressing a large query answer costs the node more CPU than the
	// bytes save (about 20% of a 1,000-event time-range query).
	noGzip := connect.WithAcceptCompression("gzip", nil, nil)
	return &api{
		hc:      hc,
		ingest:  scopev1connect.NewIngestServiceClient(hc, base, noGzip),
		query:   scopev1connect.NewQueryServiceClient(hc, base, noGzip),
		cluster: scopev1connect.NewClusterServiceClient(hc, base, noGzip),
	}, nil
}

// context returns the context of one request: cancelled by SIGINT/SIGTERM
// and bounded by -timeout.
func (c *clientFlags) context() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if c.timeout <= 0 {
		return ctx, stop
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	return ctx, func() { cancel(); stop() }
}

// reportError prints err for a user and returns the exit code: a usage
// error prints the command's flags, a server error its code, message and
// the IngestResponse detail when it carries one.
func reportError(stderr io.Writer, fs *flag.FlagSet, err error) int {
	if errors.Is(err, errUsage) {
		fmt.Fprintf(stderr, "scope %s: %s\n", fs.Name(), strings.TrimPrefix(err.Error(), errUsage.Error()+": "))
		flagHint(fs)
		return exitUsage
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		fmt.Fprintf(stderr, "scope %s: %v\n", fs.Name(), err)
		return exitError
	}
	fmt.Fprintf(stderr, "scope %s: %s: %s\n", fs.Name(), ce.Code(), ce.Message())
	for _, d := range ce.Details() {
		msg, derr := d.Value()
		if derr != nil {
			continue
		}
		if ir, ok := msg.(*scopev1.IngestResponse); ok {
			fmt.Fprintf(stderr, "  accepted %d, refused %d\n", ir.GetAccepted(), ir.GetRefused())
			for _, s := range ir.GetShards() {
				if s.GetErrorCode() == "" {
					continue
				}
				fmt.Fprintf(stderr, "  shard %d: %s: %s", s.GetShard(), s.GetErrorCode(), s.GetErrorMessage())
				if s.GetLeader() != "" {
					fmt.Fprintf(stderr, " (leader %s)", s.GetLeader())
				}
				fmt.Fprintln(stderr)
			}
			continue
		}
		fmt.Fprintf(stderr, "  detail %s: %s\n", msg.ProtoReflect().Descriptor().FullName(), protoText(msg))
	}
	return exitError
}

// jsonLine is the -json output form: proto3 JSON on one line.
var jsonLine = protojson.MarshalOptions{UseProtoNames: false}

func protoText(m proto.Message) string {
	b, err := jsonLine.Marshal(m)
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	return string(b)
}

// printJSON writes m as one line of proto3 JSON.
// unaryCall is the shape every one-request command shares: dial the node,
// make the request with the command's context (SIGINT, -timeout), and
// print the answer as JSON with -json, else with show.
func unaryCall[R proto.Message](cf *clientFlags, stdout io.Writer, do func(context.Context, *api) (R, error), show func(R) error) error {
	c, err := cf.dial()
	if err != nil {
		return err
	}
	ctx, cancel := cf.context()
	defer cancel()
	resp, err := do(ctx, c)
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, resp)
	}
	return show(resp)
}

// msg is a Connect response's message, or the call's error.
func msg[T any](r *connect.Response[T], err error) (*T, error) {
	if err != nil {
		return nil, err
	}
	return r.Msg, nil
}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := jsonLine.Marshal(m)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}
