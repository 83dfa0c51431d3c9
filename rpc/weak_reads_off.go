//go:build !scope_weak_reads

package rpc

// weakLeaderReads is false in every real build. See weak_reads_on.go.
const weakLeaderReads = false
