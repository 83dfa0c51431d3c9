package main

import "syscall"

// devSysProcAttr puts an agent in its own process group and has the kernel
// send it SIGTERM if dev-cluster dies without stopping it.
func devSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
