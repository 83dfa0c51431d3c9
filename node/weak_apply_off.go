//go:build !scope_weak_apply

package node

// weakSkipEntry is false in every real build. See weak_apply_on.go.
func weakSkipEntry() bool { return false }
