package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// Config is one campaign.
type Config struct {
	// Binary is the scope binary the agents run.
	Binary string
	// Dir holds the agents' data directories and logs, and the report's
	// files (violation visualizations). It must exist.
	Dir string
	// Network: NetNetns (partitions; needs root and iproute2) or
	// NetLoopback (no partition faults).
	Network string
	// Nodes, Shards, Replicas shape the cluster (defaults 4, 4, 3).
	Nodes, Shards, Replicas int
	// Seed fixes the fault schedule and the workload's choices (the
	// interleaving of processes is not reproducible).
	Seed uint64
	// Duration of the fault phase (default 2 minutes).
	Duration time.Duration
	// Faults enabled (default AllFaults, less the partitions on the
	// loopback network).
	Faults []string
	// Writers and Readers: concurrent clients (defaults 8 and 4).
	Writers, Readers int
	// CheckTimeout bounds the linearizability check of one process
	// (default 30 s); a check that does not finish is reported.
	CheckTimeout time.Duration
	// Logf receives progress lines (default: none).
	Logf func(format string, args ...any)
}

func (c *Config) setDefaults() error {
	if c.Binary == "" || c.Dir == "" {
		return errors.New("chaos: Config.Binary and Config.Dir are required")
	}
	if c.Network == "" {
		c.Network = NetNetns
	}
	if c.Network != NetNetns && c.Network != NetLoopback {
		return fmt.Errorf("chaos: network %q: want %s or %s", c.Network, NetNetns, NetLoopback)
	}
	if c.Nodes == 0 {
		c.Nodes = 4
	}
	if c.Shards == 0 {
		c.Shards = 4
	}
	if c.Replicas == 0 {
		c.Replicas = 3
	}
	if c.Nodes < 3 || c.Nodes > 9 {
		return fmt.Errorf("chaos: %d nodes: want 3..9 (a fault must leave a quorum)", c.Nodes)
	}
	if c.Replicas < 3 || c.Replicas > c.Nodes {
		return fmt.Errorf("chaos: %d replicas: want 3..%d (one node down must leave a quorum)", c.Replicas, c.Nodes)
	}
	if c.Duration == 0 {
		c.Duration = 2 * time.Minute
	}
	if c.Writers == 0 {
		c.Writers = 8
	}
	if c.Readers == 0 {
		c.Readers = 4
	}
	if c.CheckTimeout == 0 {
		c.CheckTimeout = 30 * time.Second
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	if len(c.Faults) == 0 {
		for _, f := range AllFaults {
			if c.Network == NetNetns || !isPartition(f) {
				c.Faults = append(c.Faults, f)
			}
		}
	}
	for _, f := range c.Faults {
		if !slices.Contains(AllFaults, f) {
			return fmt.Errorf("chaos: unknown fault %q (known: %s)", f, strings.Join(AllFaults, ", "))
		}
		if isPartition(f) && c.Network != NetNetns {
			return fmt.Errorf("chaos: fault %q needs the %s network", f, NetNetns)
		}
	}
	return nil
}

// Report is what a campaign found.
type Report struct {
	Seed     uint64         `json:"seed"`
	Network  string         `json:"network"`
	Nodes    int            `json:"nodes"`
	Shards   int            `json:"shards"`
	Duration string         `json:"duration"`
	Faults   map[string]int `json:"faults"`
	// FaultErrors counts faults that could not be injected.
	FaultErrors int           `json:"fault_errors"`
	Workload    workloadStats `json:"workload"`
	// Linearizability of the history (per process).
	Linearizability linearizability `json:"linearizability"`
	// Anomalies: safety violations found by the final checks and the
	// clients (the first 200; AnomalyCount is exact).
	AnomalyCount int      `json:"anomaly_count"`
	Anomalies    []string `json:"anomalies"`
	// Unrecovered: times the cluster was not whole again within the
	// deadline after a fault was repaired (the nemesis goes on, without
	// wipes and leaves until it is). Not whole at the end is an anomaly.
	Unrecovered []string `json:"unrecovered"`
	// ReplicasCompared counts the replicas whose stores were compared at
	// the end; ReplicaMismatches those whose applied index or digest
	// differs from the first replica of their shard (each is also an
	// anomaly, counted here apart from the capped list).
	ReplicasCompared  int `json:"replicas_compared"`
	ReplicaMismatches int `json:"replica_mismatches"`
	EventsVerified    int `json:"events_verified"`
}

// OK reports whether the campaign found no safety violation.
func (r *Report) OK() bool {
	return r.AnomalyCount == 0 && r.Linearizability.ViolationCount == 0 && r.Linearizability.TimedOut == 0
}

// formationWait is how long after the cluster formed the first wipe or
// leave may come: the agents' formation window (30 s) and some margin.
const formationWait = 35 * time.Second

// campaign is one run.
type campaign struct {
	cfg       Config
	net       network
	agents    []*agent
	endpoints []endpoint
	hc        *http.Client
	report    *Report
	anom      anomalies
	mu        sync.Mutex // serializes restarts
}

func (c *campaign) logf(format string, args ...any) { c.cfg.Logf(format, args...) }

// Run runs a campaign: it starts the cluster, runs the workload under the
// nemesis for the duration, repairs everything, checks the history and the
// replicas, and stops the cluster. The error is for a campaign that could
// not run; what it found is in the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	rnd := rand.New(rand.NewPCG(cfg.Seed, 0x5c09e))
	c := &campaign{cfg: cfg, hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		report: &Report{Seed: cfg.Seed, Network: cfg.Network, Nodes: cfg.Nodes, Shards: cfg.Shards,
			Duration: cfg.Duration.String(), Faults: make(map[string]int)}}
	defer c.hc.CloseIdleConnections()
	var err error
	if cfg.Network == NetNetns {
		c.net, err = newNetns(cfg.Nodes, rnd)
	} else {
		c.net = loopbackNet{}
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := c.net.close(); err != nil {
			c.logf("network teardown: %v", err)
		}
	}()
	c.agents, err = planAgents(clusterSpec{binary: cfg.Binary, dir: cfg.Dir, nodes: cfg.Nodes, shards: cfg.Shards,
		replicas: cfg.Replicas, stabilization: 2 * time.Second}, c.net)
	if err != nil {
		return nil, err
	}
	defer c.stopAll()
	for _, a := range c.agents {
		c.endpoints = append(c.endpoints, newEndpoint(c.hc, a.http))
		if err := a.start(); err != nil {
			return nil, err
		}
	}
	if err := c.waitWhole(ctx, 2*time.Minute); err != nil {
		return nil, fmt.Errorf("chaos: the cluster did not form: %w", err)
	}
	c.logf("cluster of %d formed; %s of faults (%s), seed %d", cfg.Nodes, cfg.Duration, strings.Join(cfg.Faults, ", "), cfg.Seed)

	hist := newHistory()
	w := newWorkload(hist, c.endpoints, cfg.Seed, &c.anom)
	load, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range cfg.Writers {
		wg.Go(func() { w.drive(load, i) })
	}
	for i := range cfg.Readers {
		wg.Go(func() { w.read(load, cfg.Writers+i) })
	}
	if slices.Contains(cfg.Faults, FaultWipe) || slices.Contains(cfg.Faults, FaultLeave) {
		// A node counts as formed once it has held replicas for the
		// formation window (30 s; docs/DECISIONS.md D24). A node that comes
		// back empty before any member is formed bootstraps a cluster of its
		// own and is then refused as another cluster's (D27): safe, but
		// never whole again without an operator. The load runs meanwhile.
		c.logf("waiting %v for the cluster to count as formed before wiping or draining nodes", formationWait)
		sleepCtx(ctx, formationWait)
	}
	nem := &nemesis{c: c, rnd: rand.New(rand.NewPCG(cfg.Seed, 0xfa17)), faults: cfg.Faults}
	nem.run(ctx, time.Now().Add(cfg.Duration))
	if err := c.healAll(ctx); err != nil {
		c.logf("final heal: %v", err)
	}
	// The load goes on while the cluster recovers, then stops.
	if err := c.waitWhole(ctx, 2*time.Minute); err != nil {
		// Every group must be back to R replicas once the faults end: a
		// group left short for good has lost the fault tolerance it
		// promised, which is a defect, not bad luck.
		c.anom.add("the cluster was not whole 2 minutes after the last fault was repaired: %v", err)
	}
	sleepCtx(ctx, 2*time.Second)
	stopLoad()
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	c.logf("load stopped: %+v", w.stats)

	if err := c.verify(ctx, w, hist); err != nil {
		return nil, err
	}
	c.report.Workload = w.stats
	c.report.AnomalyCount, c.report.Anomalies = c.anom.snapshot()
	return c.report, nil
}

// restart starts a stopped agent again and waits until it is ready.
func (c *campaign) restart(ctx context.Context, a *agent) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if a.isRunning() {
		return nil
	}
	if err := a.start(); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return a.waitReady(rctx, c.hc)
}

// healAll removes every fault: the partition, paused and stopped agents.
func (c *campaign) healAll(ctx context.Context) error {
	errs := []error{c.net.heal()}
	for _, a := range c.agents {
		a.mu.Lock()
		paused, running := a.paused, a.running
		a.mu.Unlock()
		if paused {
			errs = append(errs, a.signal(syscall.SIGCONT))
		}
		if !running {
			errs = append(errs, c.restart(ctx, a))
		}
	}
	return errors.Join(errs...)
}

// waitWhole waits until every agent is ready and every shard has a leader,
// R voters, and replicas that have applied at most wholeLag entries less
// than the leader.
func (c *campaign) waitWhole(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last error
	for {
		last = c.whole(ctx, wholeLag)
		if last == nil {
			return nil
		}
		if !sleepCtx(ctx, 250*time.Millisecond) {
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		}
	}
}

// wholeLag is how far behind its leader a replica may be for the cluster
// to count as whole while the load runs.
const wholeLag = 2000

// whole reports why the cluster is not whole, or nil: every agent ready,
// every shard led, with R voters whose replicas have applied at most
// maxLag entries less than the leader's.
func (c *campaign) whole(ctx context.Context, maxLag uint64) error {
	for _, a := range c.agents {
		if !a.isRunning() {
			return fmt.Errorf("%s is not running", a.name)
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		ok := a.ready(rctx, c.hc)
		cancel()
		if !ok {
			return fmt.Errorf("%s is not ready", a.name)
		}
	}
	views, err := c.clusterView(ctx)
	if err != nil {
		return err
	}
	want := min(c.cfg.Replicas, len(c.agents))
	for shard := range uint32(c.cfg.Shards) {
		v := views[shard]
		if v == nil || v.leader == "" {
			return fmt.Errorf("shard %d has no leader", shard)
		}
		if v.voters != want {
			return fmt.Errorf("shard %d has %d voters (%v), want %d", shard, v.voters, v.servers, want)
		}
		lead := v.applied[v.leader]
		for _, node := range v.servers {
			applied, ok := v.applied[node]
			if !ok || applied == 0 {
				return fmt.Errorf("shard %d: %s is in the group but holds no replica", shard, node)
			}
			if applied+maxLag < lead {
				return fmt.Errorf("shard %d: %s applied %d, the leader %d", shard, node, applied, lead)
			}
		}
	}
	return nil
}

// shardView is a shard as its replicas report it (Shards answers for the
// answering node's own replicas only).
type shardView struct {
	leader  string   // the node that says it leads
	servers []string // the leader's configuration
	voters  int
	applied map[string]uint64 // by node: what its replica has applied
}

// clusterView asks every running agent for its replicas.
func (c *campaign) clusterView(ctx context.Context) (map[uint32]*shardView, error) {
	type answer struct {
		name   string
		shards []*scopev1.ShardInfo
		err    error
	}
	answers := make([]answer, len(c.agents))
	var wg sync.WaitGroup
	for i, a := range c.agents {
		if !a.isRunning() {
			continue
		}
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			resp, err := c.endpoints[i].cluster.Shards(rctx, connect.NewRequest(&scopev1.ShardsRequest{}))
			answers[i] = answer{name: a.name, err: err}
			if err == nil {
				answers[i].shards = resp.Msg.GetShards()
			}
		})
	}
	wg.Wait()
	views := make(map[uint32]*shardView)
	answered := 0
	for _, ans := range answers {
		if ans.err != nil || ans.name == "" {
			continue
		}
		answered++
		for _, s := range ans.shards {
			if len(s.GetReplicas()) == 0 {
				continue // not hosted by this node
			}
			v := views[s.GetShard()]
			if v == nil {
				v = &shardView{applied: make(map[string]uint64)}
				views[s.GetShard()] = v
			}
			for _, r := range s.GetReplicas() {
				if r.GetNode() == ans.name {
					v.applied[ans.name] = r.GetAppliedIndex()
				}
			}
			if s.GetLeader() == ans.name {
				v.leader, v.servers, v.voters = ans.name, nil, 0
				for _, r := range s.GetReplicas() {
					v.servers = append(v.servers, r.GetNode())
					if r.GetSuffrage() == scopev1.Suffrage_SUFFRAGE_VOTER {
						v.voters++
					}
				}
			}
		}
	}
	if answered == 0 {
		return nil, errors.New("no agent answered Shards")
	}
	return views, nil
}

// randomLeader returns a random shard and the index of its leader's agent.
func (c *campaign) randomLeader(ctx context.Context, rnd *rand.Rand) (uint32, int, error) {
	views, err := c.clusterView(ctx)
	if err != nil {
		return 0, 0, err
	}
	shard := uint32(rnd.IntN(c.cfg.Shards))
	if v := views[shard]; v != nil {
		for i, a := range c.agents {
			if a.name == v.leader {
				return shard, i, nil
			}
		}
	}
	return 0, 0, fmt.Errorf("shard %d: %w", shard, errNoLeader)
}

func (c *campaign) names(group []int) string {
	var out []string
	for _, i := range group {
		out = append(out, c.agents[i].name)
	}
	return strings.Join(out, ",")
}

// stopAll stops every agent gracefully (concurrently), killing those that
// do not stop in time.
func (c *campaign) stopAll() {
	var wg sync.WaitGroup
	for _, a := range c.agents {
		wg.Go(func() {
			if err := a.stop(60 * time.Second); err != nil {
				c.logf("%v", err)
			}
		})
	}
	wg.Wait()
}
