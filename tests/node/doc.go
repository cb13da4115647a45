// Package node pins the container runtime of the test cluster's real node:
// containerd 2.x with its runc shim, runc, and the CNI reference plugins, all
// upstream and unmodified, built from their Go modules by the `tool`
// directives in go.mod (`go build -o DIR tool`). It holds no code of its own;
// the Rust helper in tests/src/node configures and starts what it builds.
package node
