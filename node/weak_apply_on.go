//go:build scope_weak_apply

package node

import "math/rand/v2"

// weakSkipEntry makes a deliberately broken build for the chaos harness's
// self-test (cluster/chaos, `go build -tags scope_weak_apply`): each
// replica skips about one command entry in 64, at random, so replicas of
// a shard diverge and acknowledged events go missing — what the harness's
// replica comparison must catch. Never set it in a build that serves users.
func weakSkipEntry() bool { return rand.IntN(64) == 0 }
