//go:build scope_weak_reads

package rpc

// weakLeaderReads makes a deliberately broken build for the chaos
// harness's self-test (cluster/chaos, `go build -tags scope_weak_reads`):
// LEADER reads are served by whatever replica the answering node holds,
// leader or not, without a read index — stale reads a linearizability
// checker must catch. Never set it in a build that serves users.
const weakLeaderReads = true
