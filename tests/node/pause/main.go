// Command pause is the test node's sandbox image: the process that holds a
// pod's namespaces while its containers come and go. It waits for SIGINT or
// SIGTERM, and reaps the children it inherits as a pod's PID 1 (when the
// pod shares its process namespace). Built static (CGO_ENABLED=0) into a
// FROM scratch image by tests/node/images.sh.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
