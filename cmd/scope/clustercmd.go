package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// This file holds the commands about the cluster: members, shards, join
// and leave.

func runMembers(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	fs := newFlagSet("members", "", stderr)
	cf.register(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	err := func() error {
		c, err := cf.dial()
		if err != nil {
			return err
		}
		ctx, cancel := cf.context()
		defer cancel()
		resp, err := c.cluster.Members(ctx, connect.NewRequest(&scopev1.MembersRequest{}))
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(stdout, resp.Msg)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATUS\tHTTP\tRAFT\tGOSSIP\tVERSION\tPROTOCOL\tLEADS")
		var excluded []string
		for _, mb := range resp.Msg.GetMembers() {
			status := strings.TrimPrefix(mb.GetStatus().String(), "MEMBER_STATUS_")
			if mb.GetExcluded() != "" {
				status += "*"
				excluded = append(excluded, fmt.Sprintf("* %s takes no replicas: %s", mb.GetName(), mb.GetExcluded()))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", mb.GetName(), status,
				dash(mb.GetHttpAddr()), dash(mb.GetRaftAddr()), dash(mb.GetGossipAddr()), dash(mb.GetVersion()),
				protocolRange(mb.GetProtocolMin(), mb.GetProtocolMax()), shardList(mb.GetShardsLed()))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, line := range excluded {
			fmt.Fprintln(stdout, line)
		}
		return nil
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

// protocolRange prints a member's protocol versions: "1", "1-2", or "-"
// when unknown.
func protocolRange(lo, hi uint32) string {
	switch {
	case lo == 0:
		return "-"
	case lo == hi:
		return fmt.Sprint(lo)
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shardList prints shards as "3: 0,4,7".
func shardList(shards []uint32) string {
	if len(shards) == 0 {
		return "0"
	}
	parts := make([]string, len(shards))
	for i, s := range shards {
		parts[i] = fmt.Sprint(s)
	}
	return fmt.Sprintf("%d: %s", len(shards), strings.Join(parts, ","))
}

func runShards(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	var local bool
	fs := newFlagSet("shards", "", stderr)
	cf.register(fs)
	fs.BoolVar(&local, "local", false, "only the answering node's view (else every live member is asked, and each replica reports its own applied index)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	err := func() error {
		c, err := cf.dial()
		if err != nil {
			return err
		}
		ctx, cancel := cf.context()
		defer cancel()
		var m *scopev1.ShardsResponse
		var unreachable []string
		if local {
			resp, err := c.cluster.Shards(ctx, connect.NewRequest(&scopev1.ShardsRequest{}))
			if err != nil {
				return err
			}
			m = resp.Msg
		} else if m, unreachable, err = clusterShards(ctx, c, cf); err != nil {
			return err
		}
		for _, u := range unreachable {
			fmt.Fprintf(stderr, "scope shards: %s\n", u)
		}
		if cf.json {
			return printJSON(stdout, m)
		}
		fmt.Fprintf(stdout, "shards: %d, replication factor: %d\n\n", m.GetShardCount(), m.GetReplicationFactor())
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SHARD\tLEADER\tTERM\tEVENTS\tREPLICAS (node:suffrage:applied:lag)")
		for _, s := range m.GetShards() {
			reps := make([]string, 0, len(s.GetReplicas()))
			for _, r := range s.GetReplicas() {
				reps = append(reps, fmt.Sprintf("%s:%s:%d:%d", r.GetNode(),
					strings.ToLower(strings.TrimPrefix(r.GetSuffrage().String(), "SUFFRAGE_")), r.GetAppliedIndex(), r.GetLag()))
			}
			leader := s.GetLeader()
			if leader == "" {
				leader = "(none)"
			}
			fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\n", s.GetShard(), leader, s.GetTerm(), s.GetEvents(), strings.Join(reps, " "))
		}
		return tw.Flush()
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

// maxShardsFanout bounds the members `scope shards` asks.
const maxShardsFanout = 64

// clusterShards asks every live member for its view of the shards it hosts
// and merges them: each shard's configuration, term and event count come
// from its leader's answer, each replica's applied index from its own
// node's answer, and lag is how far that is behind the leader's applied
// index. A member that does not answer is reported in unreachable, and its
// replicas show the applied index the leader knows (0).
func clusterShards(ctx context.Context, c *api, cf clientFlags) (*scopev1.ShardsResponse, []string, error) {
	mresp, err := c.cluster.Members(ctx, connect.NewRequest(&scopev1.MembersRequest{}))
	if err != nil {
		return nil, nil, err
	}
	first, err := c.cluster.Shards(ctx, connect.NewRequest(&scopev1.ShardsRequest{}))
	if err != nil {
		return nil, nil, err
	}
	views := map[string]*scopev1.ShardsResponse{}
	var unreachable []string
	for _, mb := range mresp.Msg.GetMembers() {
		if mb.GetStatus() != scopev1.MemberStatus_MEMBER_STATUS_ALIVE || mb.GetHttpAddr() == "" {
			continue
		}
		if len(views) >= maxShardsFanout {
			unreachable = append(unreachable, fmt.Sprintf("%s: not asked: more than %d members", mb.GetName(), maxShardsFanout))
			continue
		}
		peer := cf
		peer.addr = mb.GetHttpAddr()
		pc, err := peer.dial()
		if err == nil {
			var resp *connect.Response[scopev1.ShardsResponse]
			if resp, err = pc.cluster.Shards(ctx, connect.NewRequest(&scopev1.ShardsRequest{})); err == nil {
				views[mb.GetName()] = resp.Msg
				continue
			}
		}
		unreachable = append(unreachable, fmt.Sprintf("%s (%s) did not answer: %v", mb.GetName(), mb.GetHttpAddr(), err))
	}
	return mergeShards(first.Msg, views), unreachable, nil
}

// mergeShards merges per-node Shards answers (views, by node name) over
// base, the answer of the node asked first. It is pure, for tests.
func mergeShards(base *scopev1.ShardsResponse, views map[string]*scopev1.ShardsResponse) *scopev1.ShardsResponse {
	out := &scopev1.ShardsResponse{ShardCount: base.GetShardCount()}
	// byNode[node][shard] is that node's own answer about shard.
	byNode := map[string]map[uint32]*scopev1.ShardInfo{}
	for name, v := range views {
		byNode[name] = map[uint32]*scopev1.ShardInfo{}
		for _, s := range v.GetShards() {
			byNode[name][s.GetShard()] = s
		}
	}
	names := make([]string, 0, len(views))
	for name := range views {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, b := range base.GetShards() {
		shard := b.GetShard()
		// The answer of the highest term knows the newest leader (a node cut
		// off, or a deposed leader that has not heard of the election, may
		// still name an old one, even itself); in that term the leader's
		// own answer, else any node's that lists the group.
		info := b
		for _, name := range names {
			s := byNode[name][shard]
			if s == nil || len(s.GetReplicas()) == 0 {
				continue
			}
			switch {
			case len(info.GetReplicas()) == 0, s.GetTerm() > info.GetTerm(),
				s.GetTerm() == info.GetTerm() && s.GetLeader() == name && info.GetLeader() != name:
				info = s
			}
		}
		merged := &scopev1.ShardInfo{Shard: shard, Leader: info.GetLeader(), Term: info.GetTerm(), Events: info.GetEvents()}
		var leaderApplied uint64
		if s := ownReplica(byNode[merged.GetLeader()][shard], merged.GetLeader()); s != nil {
			leaderApplied = s.GetAppliedIndex()
		}
		for _, r := range info.GetReplicas() {
			rep := &scopev1.Replica{Node: r.GetNode(), Suffrage: r.GetSuffrage(), AppliedIndex: r.GetAppliedIndex()}
			if own := ownReplica(byNode[r.GetNode()][shard], r.GetNode()); own != nil {
				rep.AppliedIndex = own.GetAppliedIndex()
			}
			if leaderApplied > rep.GetAppliedIndex() {
				rep.Lag = leaderApplied - rep.GetAppliedIndex()
			}
			merged.Replicas = append(merged.Replicas, rep)
		}
		out.ReplicationFactor = max(out.ReplicationFactor, base.GetReplicationFactor())
		out.Shards = append(out.Shards, merged)
	}
	return out
}

// ownReplica is node's entry in its own answer about a shard.
func ownReplica(s *scopev1.ShardInfo, node string) *scopev1.Replica {
	for _, r := range s.GetReplicas() {
		if r.GetNode() == node {
			return r
		}
	}
	return nil
}

func runJoin(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	fs := newFlagSet("join", "<gossip-addr>...", stderr)
	cf.register(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	err := func() error {
		addrs := fs.Args()
		if len(addrs) == 0 {
			return usageError("want at least one gossip address (host:port) of a member of the cluster to join")
		}
		c, err := cf.dial()
		if err != nil {
			return err
		}
		ctx, cancel := cf.context()
		defer cancel()
		resp, err := c.cluster.Join(ctx, connect.NewRequest(&scopev1.JoinRequest{Addrs: addrs}))
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(stdout, resp.Msg)
		}
		fmt.Fprintf(stdout, "%s contacted %d of %d addresses\n", cf.addr, resp.Msg.GetContacted(), len(addrs))
		return nil
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

// leaveProgressEvery is how often `scope leave` reports the replicas left.
const leaveProgressEvery = time.Second

func runLeave(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	fs := newFlagSet("leave", "", stderr)
	cf.register(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if !flagSet(fs, "timeout") {
		cf.timeout = 10 * time.Minute // draining moves every replica: minutes, not seconds
	}
	err := func() error {
		c, err := cf.dial()
		if err != nil {
			return err
		}
		ctx, cancel := cf.context()
		defer cancel()
		// The node's name and the replicas it hosts before the drain. The
		// request names no node: the answering node is the one that leaves.
		name, hosted, err := hostedReplicas(ctx, c, cf.addr)
		if err != nil {
			return err
		}
		start := time.Now()
		// With -json every line is an object: the drain's start, each
		// change of the replicas left, the end.
		emit := func(state string, replicas int) {
			_ = json.NewEncoder(stdout).Encode(struct {
				Node      string `json:"node"`
				State     string `json:"state"`
				Replicas  int    `json:"replicas"`
				ElapsedMs int64  `json:"elapsed_ms"`
			}{name, state, replicas, time.Since(start).Milliseconds()})
		}
		if cf.json {
			emit("draining", hosted)
		} else {
			fmt.Fprintf(stdout, "%s: draining %d replicas, then leaving\n", name, hosted)
		}
		done := make(chan error, 1)
		go func() {
			_, err := c.cluster.Leave(ctx, connect.NewRequest(&scopev1.LeaveRequest{}))
			done <- err
		}()
		tick := time.NewTicker(leaveProgressEvery)
		defer tick.Stop()
		last := hosted
		for {
			select {
			case err := <-done:
				if err != nil {
					return err
				}
				if cf.json {
					emit("left", 0)
					return nil
				}
				fmt.Fprintf(stdout, "%s left the cluster after %s; its agent stops\n", name, time.Since(start).Round(100*time.Millisecond))
				return nil
			case <-tick.C:
				pctx, pcancel := context.WithTimeout(ctx, leaveProgressEvery)
				_, n, err := hostedReplicas(pctx, c, cf.addr)
				pcancel()
				if err == nil && n != last {
					last = n
					if cf.json {
						emit("draining", n)
						continue
					}
					fmt.Fprintf(stdout, "  %d replicas still on %s (%s)\n", n, name, time.Since(start).Round(100*time.Millisecond))
				}
			}
		}
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

// hostedReplicas returns the answering node's name (the member whose HTTP
// address is -addr; "the node at <addr>" if none matches, e.g. behind an
// advertised address) and how many shard groups it hosts: the node's
// Shards answer lists replicas only for the groups it is part of.
func hostedReplicas(ctx context.Context, c *api, addr string) (string, int, error) {
	mresp, err := c.cluster.Members(ctx, connect.NewRequest(&scopev1.MembersRequest{}))
	if err != nil {
		return "", 0, err
	}
	sresp, err := c.cluster.Shards(ctx, connect.NewRequest(&scopev1.ShardsRequest{}))
	if err != nil {
		return "", 0, err
	}
	groups := 0
	for _, s := range sresp.Msg.GetShards() {
		if len(s.GetReplicas()) > 0 {
			groups++
		}
	}
	name := "the node at " + addr
	for _, mb := range mresp.Msg.GetMembers() {
		if a := strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "https://"); mb.GetHttpAddr() == a {
			name = mb.GetName()
		}
	}
	return name, groups, nil
}

// runTransferLeadership is `scope transfer-leadership -shard N [-to NODE]`.
func runTransferLeadership(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	fs := newFlagSet("transfer-leadership", "", stderr)
	cf.register(fs)
	shard := fs.Int("shard", -1, "the shard whose leadership moves (required)")
	to := fs.String("to", "", "the voter that takes it (default: the most up to date)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	err := func() error {
		if fs.NArg() > 0 {
			return usageError("unexpected arguments %q", fs.Args())
		}
		if *shard < 0 {
			return usageError("-shard: required")
		}
		return unaryCall(&cf, stdout, func(ctx context.Context, c *api) (*scopev1.TransferLeadershipResponse, error) {
			return msg(c.cluster.TransferLeadership(ctx, connect.NewRequest(&scopev1.TransferLeadershipRequest{Shard: uint32(*shard), To: *to})))
		}, func(m *scopev1.TransferLeadershipResponse) error {
			leader := m.GetLeader()
			if leader == "" {
				leader = "(electing)"
			}
			fmt.Fprintf(stdout, "shard %d: %s stepped down; leader now %s\n", *shard, m.GetFrom(), leader)
			return nil
		})
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}

func runReshard(args []string, stdout, stderr io.Writer) int {
	var cf clientFlags
	fs := newFlagSet("reshard", "", stderr)
	cf.register(fs)
	shards := fs.Uint("shards", 0, "the shard count wanted: the current count doubled once or more (required)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	timeoutSet := false
	fs.Visit(func(f *flag.Flag) { timeoutSet = timeoutSet || f.Name == "timeout" })
	if !timeoutSet {
		cf.timeout = 10 * time.Minute // a reshard waits for every split and handoff
	}
	err := func() error {
		if fs.NArg() > 0 {
			return usageError("unexpected arguments %q", fs.Args())
		}
		if *shards == 0 || *shards > 1<<16 {
			return usageError("-shards: required, the current count doubled (e.g. 32 for 16)")
		}
		return unaryCall(&cf, stdout, func(ctx context.Context, c *api) (*scopev1.ReshardResponse, error) {
			return msg(c.cluster.Reshard(ctx, connect.NewRequest(&scopev1.ReshardRequest{Shards: uint32(*shards)})))
		}, func(m *scopev1.ReshardResponse) error {
			if m.GetFrom() == m.GetShards() && m.GetSplits() == 0 {
				fmt.Fprintf(stdout, "the cluster has %d shards already\n", m.GetShards())
				return nil
			}
			fmt.Fprintf(stdout, "resharded from %d to %d shards (%d splits by this call)\n", m.GetFrom(), m.GetShards(), m.GetSplits())
			return nil
		})
	}()
	if err != nil {
		return reportError(stderr, fs, err)
	}
	return exitOK
}
