package chaos

import "syscall"

// agentSysProcAttr puts an agent in its own process group (a ^C of the
// harness reaches the harness only, which stops the agents itself) and has
// the kernel kill it if the harness dies without doing so.
func agentSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
