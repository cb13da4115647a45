// Command kubetest is the test control plane of Divert's end-to-end tests: the
// unmodified upstream kube-apiserver, kube-controller-manager,
// kube-scheduler, kubelet, kube-proxy and kubectl, an embedded etcd and CoreDNS with its kubernetes
// plugin, built from Go modules
// into one multi-call binary so that a clean machine needs only the Go
// toolchain and the module proxy.
//
// It is test infrastructure only; the product is Rust. The Rust helper in
// tests/src/cluster (the crate divert-tests) chooses every flag; this file only
// dispatches on the first argument (or on the name it was called by, so a
// `kubectl` symlink to it is a kubectl).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/component-base/cli"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = `usage: kubetest COMMAND [FLAGS]

commands:
  etcd                     an embedded etcd server (flags: kubetest etcd -h)
  coredns                  CoreDNS with its kubernetes plugin (flags: -conf FILE)
  kube-apiserver           the upstream kube-apiserver
  kube-controller-manager  the upstream kube-controller-manager
  kube-scheduler           the upstream kube-scheduler (with the real node)
  kubelet                  the upstream kubelet (the real node's)
  kube-proxy               the upstream kube-proxy (the real node's)
  kubectl                  the upstream kubectl
`

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if name == "kubetest" {
		if len(args) == 0 {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(64)
		}
		name, args = args[0], args[1:]
	}
	// cobra reads os.Args[1:]; make it see the sub-command's own arguments.
	os.Args = append([]string{name}, args...)
	switch name {
	case "etcd":
		os.Exit(runEtcd(args))
	case "coredns":
		runCoreDNS()
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubelet":
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "kube-proxy":
		os.Exit(cli.Run(proxy.NewProxyCommand()))
	case "kubectl":
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	default:
		fmt.Fprintf(os.Stderr, "kubetest: unknown command %q\n\n%s", name, usage)
		os.Exit(64)
	}
}
