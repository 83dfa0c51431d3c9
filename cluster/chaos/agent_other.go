//go:build !linux

package chaos

import "syscall"

// agentSysProcAttr puts an agent in its own process group.
func agentSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
