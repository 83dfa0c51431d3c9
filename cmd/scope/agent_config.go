package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/fftoml"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/rpc"
)

// agentConfig is everything `scope agent` is told on its command line.
// Defaults come from node.DefaultConfig and rpc.DefaultConfig: the flags
// write straight into those structs, so there is one source of truth.
type agentConfig struct {
	dev       bool
	name      string
	dataDir   string
	httpAddr  string
	raftAddr  string
	shards    uint   // fixed at bootstrap; see dataDirMeta
	shardsSet bool   // -shards was given (else a stored count is adopted)
	logLevel  string // debug, info, warn, error
	logFormat string // text, json
	pprof     bool   // serve net/http/pprof under /debug/pprof/ on -http

	// Cluster mode (without -dev).
	gossipAddr      string
	join            []string // gossip addresses of members (-join, repeatable)
	bootstrapExpect int
	replicas        int
	replicasSet     bool     // -replicas was given (else a stored R is adopted)
	gossipKeys      [][]byte // -gossip-key, decoded; the first encrypts
	gossipProfile   string   // cluster.ProfileLAN or cluster.ProfileLocal
	advertiseHTTP   string   // what other nodes and clients dial; default: the bound -http
	advertiseRaft   string
	advertiseGossip string
	stabilization   time.Duration // -stabilization-time: cluster.Config.StabilizationTime
	gossipKeyring   string        // -gossip-keyring FILE: gossipKeys read from it (reloaded on SIGHUP)

	authTokens string        // -auth-tokens FILE (reloaded on SIGHUP)
	tokens     *rpc.TokenSet // read from authTokens at start
	maxReqSize uint64        // -max-request-bytes
	queryMem   uint64        // -query-memory
	blockCache uint64        // -block-cache-size

	tls tlsFlags // -tls-*, -insecure (agent_tls.go)

	node node.Config
	rpc  rpc.Config
}

// Agent defaults that are not node or rpc settings.
const (
	defaultHTTPAddr = "127.0.0.1:7070"
	defaultRaftAddr = "127.0.0.1:7071"
	defaultGossip   = "127.0.0.1:7072"
	defaultReplicas = 3
	devName         = "dev"
	devDataDir      = "data/dev"
)

// parseAgentFlags parses args into a validated agentConfig.
func parseAgentFlags(args []string, stderr io.Writer) (*agentConfig, *flag.FlagSet, error) {
	c := &agentConfig{node: node.DefaultConfig("", ""), rpc: rpc.DefaultConfig()}
	fs := newFlagSet("agent", "", stderr)
	fs.BoolVar(&c.dev, "dev", false, "development mode: one node named \"dev\", data in ./"+devDataDir+" (unless -data-dir)")
	fs.StringVar(&c.name, "name", "", "node name, unique in the cluster (default: the host name; \"dev\" with -dev)")
	fs.StringVar(&c.dataDir, "data-dir", "", "data directory (default: ./data/<name>, ./"+devDataDir+" with -dev)")
	fs.StringVar(&c.httpAddr, "http", defaultHTTPAddr, "public HTTP address: Connect/gRPC API, /metrics, /healthz, /readyz")
	fs.StringVar(&c.raftAddr, "raft", defaultRaftAddr, "Raft TCP address (every shard's group shares it)")
	fs.UintVar(&c.shards, "shards", uint(c.node.Shards), "shard count, fixed when the data directory is created (1..4096)")
	fs.StringVar(&c.gossipAddr, "gossip", defaultGossip, "gossip (memberlist) bind address, ip:port, TCP and UDP")
	fs.Func("join", "gossip address (ip:port) of a cluster member to join; repeatable or comma-separated", func(v string) error {
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				c.join = append(c.join, a)
			}
		}
		return nil
	})
	fs.IntVar(&c.bootstrapExpect, "bootstrap-expect", 0, "form a new cluster once this many nodes (this one included) have met; ignored once the data directory holds a cluster")
	fs.IntVar(&c.replicas, "replicas", defaultReplicas, "replicas per shard, R (1..7; capped by the number of nodes), fixed when the data directory is created")
	fs.Func("gossip-key", "base64 key (16, 24 or 32 bytes) encrypting gossip; repeatable: the first encrypts, all decrypt (rotation)", func(v string) error {
		k, err := cluster.ParseGossipKey(v)
		if err != nil {
			return err
		}
		c.gossipKeys = append(c.gossipKeys, k)
		return nil
	})
	fs.StringVar(&c.gossipKeyring, "gossip-keyring", "", "file of base64 gossip keys, one a line (# comments): the first encrypts, all decrypt; reloaded on SIGHUP (rotation); also derives the node-to-node credential")
	fs.StringVar(&c.authTokens, "auth-tokens", "", "file of client tokens, one a line: ROLE SHA256HEX [NAME] (roles ingest, query, admin; `scope token new` prints lines); reloaded on SIGHUP")
	c.maxReqSize = uint64(c.rpc.MaxRequestBytes)
	fs.Var(byteSize{&c.maxReqSize}, "max-request-bytes", "largest request message (one stream message for IngestStream), e.g. 16MiB; larger: RESOURCE_EXHAUSTED")
	c.queryMem = uint64(c.rpc.QueryMemory)
	fs.Var(byteSize{&c.queryMem}, "query-memory", "bytes of events one query may buffer on the node that answers it: an Events page is cut there (with its cursor), a larger CallTree or MessageFlow is refused (RESOURCE_EXHAUSTED), a Trace truncated")
	fs.IntVar(&c.rpc.MaxEventsPerRequest, "max-events-per-request", c.rpc.MaxEventsPerRequest, "most events in one ingest request (stream message); more: INVALID_ARGUMENT")
	fs.DurationVar(&c.rpc.QueryTimeout, "query-timeout", c.rpc.QueryTimeout, "the server's deadline on every query (a client's shorter deadline wins)")
	fs.IntVar(&c.rpc.MaxQueries, "max-queries", c.rpc.MaxQueries, "queries in flight on this node; more: RESOURCE_EXHAUSTED")
	fs.IntVar(&c.rpc.MaxQueriesPerCaller, "max-queries-per-caller", c.rpc.MaxQueriesPerCaller, "queries in flight per caller (token name, or remote IP without tokens)")
	fs.IntVar(&c.rpc.MaxTails, "max-tails", c.rpc.MaxTails, "Tail streams open on this node; more: RESOURCE_EXHAUSTED")
	fs.IntVar(&c.rpc.MaxTailsPerCaller, "max-tails-per-caller", c.rpc.MaxTailsPerCaller, "Tail streams open per caller (token name, or remote IP without tokens)")
	fs.StringVar(&c.gossipProfile, "gossip-profile", cluster.ProfileLAN, "gossip timings: lan (production) or local (loopback: failures detected within seconds)")
	fs.DurationVar(&c.stabilization, "stabilization-time", cluster.DefaultConfig("").StabilizationTime,
		"how long a member must have been alive (or, for a member of a shard's group, dead) before replicas move to it (away from it); 0: move at once")
	fs.StringVar(&c.advertiseHTTP, "advertise-http", "", "HTTP address other nodes reach this one at (default: the bound -http; required if -http binds 0.0.0.0)")
	fs.StringVar(&c.advertiseRaft, "advertise-raft", "", "Raft address other nodes reach this one at (default: the bound -raft)")
	fs.StringVar(&c.advertiseGossip, "advertise-gossip", "", "gossip ip:port other nodes reach this one at (default: derived from -gossip)")

	p := &c.node.Pool
	fs.IntVar(&p.RingCapacity, "ring-capacity", p.RingCapacity, "events buffered per shard before ingest is refused (a power of two)")
	fs.IntVar(&p.BatchSize, "batch-size", p.BatchSize, "most events per Raft entry")
	fs.DurationVar(&p.FlushInterval, "flush-interval", p.FlushInterval, "longest a partial batch waits for more events")
	fs.IntVar(&p.Writers, "writers", p.Writers, "writer goroutines proposing batches, fixed (default GOMAXPROCS; see -writers-max)")
	fs.IntVar(&p.MinWriters, "writers-min", 1, "with -writers-max: the fewest writers the pool shrinks to")
	fs.IntVar(&p.MaxWriters, "writers-max", 0, "the most writers the pool grows to when rings fill or writers are busy (0: -writers, fixed)")
	fs.DurationVar(&c.node.CommitTimeout, "commit-timeout", c.node.CommitTimeout, "how long a COMMITTED ingest waits for buffer space and commit")
	fs.IntVar(&c.node.Correlator.Limits.MaxPayloadBytes, "payload-limit", c.node.Correlator.Limits.MaxPayloadBytes,
		"payload bytes kept per event; longer payloads are truncated and marked")
	fs.DurationVar(&c.rpc.HedgeDelay, "hedge-delay", c.rpc.HedgeDelay,
		"how long an ANY shard read waits for its first replica before also asking a second (0: never)")
	fs.DurationVar(&c.node.RetentionMaxAge, "retention-max-age", c.node.RetentionMaxAge, "delete events older than this (0: keep)")
	fs.Uint64Var(&c.node.RetentionMaxEvents, "retention-max-events", c.node.RetentionMaxEvents, "keep at most this many newest events per shard (0: no limit)")
	fs.Var(byteSize{&c.node.Disk.MinFree}, "min-free-disk",
		"free space the data directory's filesystem must keep (e.g. 256MiB, 1GiB; 0: no guard): below it ingest is refused with RESOURCE_EXHAUSTED, reads go on")
	fs.Var(byteSize{&c.node.Disk.Reserve}, "disk-reserve",
		"size of the reserve file kept in the data directory, released when free space falls below half of -min-free-disk (0: none)")
	fs.Var(byteSize{&c.node.Store.MemTableSize}, "memtable-size",
		"the store's Pebble memtable (the raft log's is half): Pebble preallocates each WAL at 110% of it; -min-free-disk must be at least 3.15 times it")
	c.blockCache = node.DefaultBlockCacheSize(1)
	fs.Var(byteSize{&c.blockCache}, "block-cache-size",
		"the store's Pebble block cache (default: a quarter of the memory, the cgroup limit if lower, at least 64MiB); queries on a store larger than it read blocks from the OS")
	fs.Var(byteSize{&c.node.Raft.LogBytes}, "raft-log-size",
		"bound of each shard's raft log (0: counted in entries only): a snapshot is taken when half of it was appended since the last one, and about half is kept after it for followers that fall behind")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
	fs.BoolVar(&c.pprof, "pprof", false, "serve Go profiles under /debug/pprof/ on the -http address (needs an admin token with -auth-tokens; without, anyone who reaches it can profile the process)")
	c.tls.register(fs)
	fs.String("config", "", "TOML file of flag values (name = value; a list for a repeatable flag); "+
		"the command line wins over SCOPE_* environment variables, which win over the file")
	usage := fs.Usage
	fs.Usage = func() {} // called on -h and on errors alike: told apart below
	// Every flag may also come from SCOPE_<NAME> (-gossip-keyring:
	// SCOPE_GOSSIP_KEYRING) or from -config: secrets need not be on the
	// command line, where ps shows them.
	err := ff.Parse(fs, args, ff.WithEnvVarPrefix("SCOPE"), ff.WithConfigFileFlag("config"),
		ff.WithConfigFileParser(fftoml.Parser))
	fs.Usage = usage
	switch {
	case errors.Is(err, flag.ErrHelp):
		usage()
		return nil, fs, err
	case err != nil:
		// The flag package printed command-line errors; the environment's
		// and the config file's are ff's.
		if !strings.HasPrefix(err.Error(), "error parsing commandline arguments") {
			fmt.Fprintf(stderr, "scope agent: %v\n", err)
		}
		flagHint(fs)
		return nil, fs, err
	}
	if fs.NArg() > 0 {
		return nil, fs, usageError("unexpected arguments %q", fs.Args())
	}
	if flagSet(fs, "writers") && (flagSet(fs, "writers-min") || flagSet(fs, "writers-max")) {
		return nil, fs, usageError("-writers is a fixed count: drop it, or drop -writers-min and -writers-max")
	}
	if flagSet(fs, "writers-min") && !flagSet(fs, "writers-max") {
		return nil, fs, usageError("-writers-min needs -writers-max (the pool scales between them)")
	}
	c.shardsSet = flagSet(fs, "shards")
	c.replicasSet = flagSet(fs, "replicas")
	if c.dev {
		// -dev is one node bootstrapped alone: cluster flags contradict it.
		for _, name := range []string{"join", "bootstrap-expect", "replicas", "gossip", "gossip-key", "gossip-keyring", "gossip-profile",
			"advertise-http", "advertise-raft", "advertise-gossip", "stabilization-time"} {
			if flagSet(fs, name) {
				return nil, fs, usageError("-%s: -dev runs one node alone (replication 1, no gossip); drop -%s, or drop -dev to run a cluster node", name, name)
			}
		}
	}
	if err := c.finish(); err != nil {
		return nil, fs, err
	}
	return c, fs, nil
}

// finish fills in derived defaults and validates every field a flag sets.
func (c *agentConfig) finish() error {
	if c.name == "" {
		c.name = devName
		if !c.dev {
			c.name = hostName()
		}
	}
	if c.dataDir == "" {
		c.dataDir = devDataDir
		if !c.dev {
			c.dataDir = filepath.Join("data", c.name)
		}
	}
	if c.shards < 1 || c.shards > 4096 {
		return usageError("-shards %d: must be in 1..4096", c.shards)
	}
	for _, a := range []struct{ flag, v string }{{"http", c.httpAddr}, {"raft", c.raftAddr}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			return usageError("-%s %q: want host:port", a.flag, a.v)
		}
	}
	if _, port, _ := net.SplitHostPort(c.httpAddr); c.httpAddr == c.raftAddr && port != "0" {
		return usageError("-http and -raft are both %q: they must differ", c.httpAddr)
	}
	// Before the cluster flags: whether to serve plaintext at all comes
	// first.
	if err := c.tls.check(c); err != nil {
		return err
	}
	if err := c.finishCluster(); err != nil {
		return err
	}
	if _, err := parseLevel(c.logLevel); err != nil {
		return err
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return usageError("-log-format %q: want text or json", c.logFormat)
	}
	if c.node.Correlator.Limits.MaxPayloadBytes < 1 || c.node.Correlator.Limits.MaxPayloadBytes > 1<<20 {
		return usageError("-payload-limit %d: must be in 1..1048576", c.node.Correlator.Limits.MaxPayloadBytes)
	}
	if c.node.RetentionMaxAge < 0 {
		return usageError("-retention-max-age %v: must be >= 0", c.node.RetentionMaxAge)
	}
	if c.node.CommitTimeout <= 0 {
		return usageError("-commit-timeout %v: must be positive", c.node.CommitTimeout)
	}
	if err := c.node.Pool.Validate(); err != nil {
		return usageError("%s", poolFlagError(err))
	}
	if err := c.node.Store.Validate(); err != nil {
		return usageError("-memtable-size %s: must be at least 1MiB and below 4GiB", byteSize{&c.node.Store.MemTableSize})
	}
	if c.blockCache < 1<<20 || c.blockCache > 1<<40 {
		return usageError("-block-cache-size %s: must be at least 1MiB and at most 1TiB", byteSize{&c.blockCache})
	}
	c.node.Store.CacheSize = int64(c.blockCache)
	if b := c.node.Raft.LogBytes; b > 0 && b < 1<<20 {
		return usageError("-raft-log-size %s: must be 0 (entries only) or at least 1MiB", byteSize{&c.node.Raft.LogBytes})
	}
	if d := c.node.Disk; d.MinFree == 0 && d.Reserve > 0 {
		return usageError("-disk-reserve %s: needs -min-free-disk (the guard releases the reserve); pass -disk-reserve 0 with -min-free-disk 0",
			byteSize{&d.Reserve})
	}
	if need := node.MinFreeFor(c.node.Store.MemTableSize); c.node.Disk.MinFree > 0 && c.node.Disk.MinFree < need {
		return usageError("-min-free-disk %s: must be 0 or at least %s with -memtable-size %s (once ingest is refused, a memtable flush and a new preallocated WAL of the store and of the raft log must still fit)",
			byteSize{&c.node.Disk.MinFree}, node.FormatBytes(need), byteSize{&c.node.Store.MemTableSize})
	}
	if err := c.finishSecurity(); err != nil {
		return err
	}
	c.node.ID = c.name
	c.node.DataDir = c.dataDir
	c.node.Shards = uint32(c.shards)
	// The pool hosts at most MaxShards rings (default 1024): every shard
	// the node may host must fit (-shards goes up to 4096).
	c.node.Pool.MaxShards = max(c.node.Pool.MaxShards, int(c.shards))
	// The ingest edge validates against the correlator's own limits.
	c.rpc.Limits = c.node.Correlator.Limits
	c.rpc.Version = version()
	return nil
}

// finishSecurity reads -auth-tokens and -gossip-keyring and checks the
// request bounds.
func (c *agentConfig) finishSecurity() error {
	if c.maxReqSize < 1<<10 || c.maxReqSize > 1<<30 {
		return usageError("-max-request-bytes %s: must be in 1KiB..1GiB", byteSize{&c.maxReqSize})
	}
	c.rpc.MaxRequestBytes = int(c.maxReqSize)
	if c.queryMem < 1<<20 || c.queryMem > 1<<40 {
		return usageError("-query-memory %s: must be in 1MiB..1TiB", byteSize{&c.queryMem})
	}
	c.rpc.QueryMemory = int(c.queryMem)
	for _, f := range []struct {
		name string
		v    int
	}{{"max-events-per-request", c.rpc.MaxEventsPerRequest}, {"max-queries", c.rpc.MaxQueries},
		{"max-queries-per-caller", c.rpc.MaxQueriesPerCaller}, {"max-tails", c.rpc.MaxTails}, {"max-tails-per-caller", c.rpc.MaxTailsPerCaller}} {
		if f.v < 1 {
			return usageError("-%s %d: must be at least 1", f.name, f.v)
		}
	}
	if c.rpc.MaxQueriesPerCaller > c.rpc.MaxQueries {
		return usageError("-max-queries-per-caller %d: must not exceed -max-queries %d", c.rpc.MaxQueriesPerCaller, c.rpc.MaxQueries)
	}
	if c.rpc.MaxTailsPerCaller > c.rpc.MaxTails {
		return usageError("-max-tails-per-caller %d: must not exceed -max-tails %d", c.rpc.MaxTailsPerCaller, c.rpc.MaxTails)
	}
	if c.rpc.QueryTimeout <= 0 {
		return usageError("-query-timeout %v: must be positive", c.rpc.QueryTimeout)
	}
	if c.gossipKeyring != "" {
		if len(c.gossipKeys) > 0 {
			return usageError("-gossip-keyring and -gossip-key: give the keys one way (the keyring file can be reloaded)")
		}
		keys, err := cluster.ReadKeyringFile(c.gossipKeyring)
		if err != nil {
			return usageError("-gossip-keyring %s", err)
		}
		c.gossipKeys = keys
	}
	if c.authTokens != "" {
		set, err := rpc.LoadTokens(c.authTokens)
		if err != nil {
			return usageError("-auth-tokens %v", err)
		}
		c.tokens = set
		if !c.dev && len(c.gossipKeys) == 0 {
			return usageError("-auth-tokens: nodes call each other's node API, which accepts no client token: pass -gossip-keyring FILE " +
				"(the node credential is derived from the gossip key), or drop -auth-tokens")
		}
	}
	return nil
}

// byteSize is a flag holding a byte count: a number with an optional unit
// B, KiB, MiB, GiB or TiB ("256MiB", "1GiB", "0").
type byteSize struct{ v *uint64 }

func (b byteSize) String() string {
	if b.v == nil {
		return "0"
	}
	n := *b.v
	for _, u := range []struct {
		name string
		size uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.size == 0 {
			return strconv.FormatUint(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatUint(n, 10)
}

func (b byteSize) Set(s string) error {
	num, mult := strings.TrimSpace(s), uint64(1)
	for _, u := range []struct {
		name string
		size uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if rest, ok := strings.CutSuffix(num, u.name); ok {
			num, mult = strings.TrimSpace(rest), u.size
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || (mult > 1 && n > math.MaxUint64/mult) {
		return fmt.Errorf("%q: want a byte count such as 268435456, 256MiB or 1GiB (units B, KiB, MiB, GiB, TiB)", s)
	}
	*b.v = n * mult
	return nil
}

// poolFlagError renames PoolConfig fields in a validation error to the
// flags that set them.
func poolFlagError(err error) string {
	return strings.NewReplacer("RingCapacity", "-ring-capacity", "BatchSize", "-batch-size",
		"FlushInterval", "-flush-interval", "MinWriters", "-writers-min", "MaxWriters", "-writers-max",
		"Writers", "-writers").Replace(err.Error())
}

// hostName is the default node name: the host name up to its first dot.
func hostName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "scope"
	}
	h, _, _ = strings.Cut(h, ".")
	return h
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, usageError("-log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// logger builds the agent's slog logger on w.
func (c *agentConfig) logger(w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.logLevel)
	opts := &slog.HandlerOptions{Level: level}
	if c.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// finishCluster validates the cluster-mode flags. What depends on the
// data directory (a new one needs -bootstrap-expect or -join) is checked
// when it is opened: see checkClusterStart.
func (c *agentConfig) finishCluster() error {
	if c.dev {
		c.replicas = 1
		return nil
	}
	if c.replicas < 1 || c.replicas > 7 {
		return usageError("-replicas %d: must be in 1..7", c.replicas)
	}
	if c.bootstrapExpect < 0 || c.bootstrapExpect > 64 {
		return usageError("-bootstrap-expect %d: must be in 0..64 (0: join a running cluster with -join)", c.bootstrapExpect)
	}
	if c.stabilization < 0 {
		return usageError("-stabilization-time %v: must not be negative (0: no flap damping)", c.stabilization)
	}
	if c.gossipProfile != cluster.ProfileLAN && c.gossipProfile != cluster.ProfileLocal {
		return usageError("-gossip-profile %q: want %s or %s", c.gossipProfile, cluster.ProfileLAN, cluster.ProfileLocal)
	}
	if err := ipPort("gossip", c.gossipAddr); err != nil {
		return err
	}
	if c.gossipAddr == c.httpAddr || c.gossipAddr == c.raftAddr {
		if _, port, _ := net.SplitHostPort(c.gossipAddr); port != "0" {
			return usageError("-gossip %q: must differ from -http and -raft", c.gossipAddr)
		}
	}
	if c.advertiseGossip != "" {
		if err := ipPort("advertise-gossip", c.advertiseGossip); err != nil {
			return err
		}
	}
	for _, a := range []struct{ flag, v string }{{"advertise-http", c.advertiseHTTP}, {"advertise-raft", c.advertiseRaft}} {
		if a.v == "" {
			continue
		}
		if host, port, err := net.SplitHostPort(a.v); err != nil || host == "" || port == "0" {
			return usageError("-%s %q: want a reachable host:port (not port 0, not an empty host)", a.flag, a.v)
		}
	}
	for _, a := range []struct{ flag, bind, adv string }{{"http", c.httpAddr, c.advertiseHTTP}, {"raft", c.raftAddr, c.advertiseRaft}} {
		if host, _, _ := net.SplitHostPort(a.bind); a.adv == "" && unspecifiedHost(host) {
			return usageError("-%s %q binds every interface: pass -advertise-%s with the address other nodes reach this one at", a.flag, a.bind, a.flag)
		}
	}
	for _, j := range c.join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			return usageError("-join %q: want the gossip address host:port of a member (its -gossip)", j)
		}
	}
	return nil
}

// ipPort checks that v (the value of -flag) is an ip:port literal, which
// memberlist requires.
func ipPort(flag, v string) error {
	host, _, err := net.SplitHostPort(v)
	if err != nil || net.ParseIP(host) == nil {
		return usageError("-%s %q: want ip:port with an IP address (e.g. 127.0.0.1:7072)", flag, v)
	}
	return nil
}

func unspecifiedHost(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// banner describes the agent's addresses, printed once at start.
func (c *agentConfig) banner(w io.Writer, httpAddr, raftAddr, gossipAddr string) {
	mode := "dev: one-node cluster (replication 1)"
	if !c.dev {
		mode = fmt.Sprintf("cluster node, replication %d", c.replicas)
	}
	abs, err := filepath.Abs(c.dataDir)
	if err != nil {
		abs = c.dataDir
	}
	scheme := "http"
	if c.tls.on() {
		scheme = "https"
	}
	fmt.Fprintf(w, "scope agent %s (%s)\n  name:     %s\n  http:     %s://%s\n  raft:     %s\n", version(), mode, c.name, scheme, httpAddr, raftAddr)
	if !c.dev {
		fmt.Fprintf(w, "  gossip:   %s\n", gossipAddr)
	}
	fmt.Fprintf(w, "  data dir: %s\n  shards:   %d\n", abs, c.shards)
}
