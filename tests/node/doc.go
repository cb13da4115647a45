// Package node pins the container runtime of the test cluster's real node:
// containerd 2.x with its runc shim, runc, and the CNI reference plugins, all
// upstream and unmodified, built from their Go modules by the `tool`
// directives in go.mod (`go build -o DIR tool`). Its only code is pause/, the
// program of the node's sandbox image; the Rust helper in
// tests/src/cluster/realnode configures and starts the rest.
package node
