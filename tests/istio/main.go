// Command istiocheck is a helper of Divert's end-to-end tests, built on
// Istio's own Go packages, so that the istio driver's objects are judged by
// Istio itself (tests/tests/cluster/istio.rs):
//
//	istiocheck crds      print Istio's CRDs for VirtualService, Gateway and
//	                     DestinationRule (compiled in from istio.io/istio/manifests)
//	istiocheck validate  validate the Istio objects read from stdin (JSON, a
//	                     List, or multi-document YAML) with the validation
//	                     functions istiod's validating webhook runs
//	istiocheck analyze   run istioctl analyze's analyzers over the objects
//	                     read from stdin (file mode: no cluster connection)
//
// Exit status: 0 when all is well, 1 when an object is invalid or an
// analyzer reports an error, 2 for bad usage or input.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	kubeyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"istio.io/istio/manifests"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/validation"
	"istio.io/istio/pkg/log"
)

// crdFile is the base chart's CRD bundle inside the embedded manifests FS.
const crdFile = "charts/base/files/crd-all.gen.yaml"

var wantedCRDs = []string{
	"virtualservices.networking.istio.io",
	"gateways.networking.istio.io",
	"destinationrules.networking.istio.io",
}

// commands maps each subcommand to its implementation.
var commands = map[string]func(in io.Reader, out io.Writer) (exitCode int, err error){
	"analyze":  analyze,
	"crds":     printCRDs,
	"validate": validate,
}

func main() {
	var run func(io.Reader, io.Writer) (int, error)
	if len(os.Args) == 2 {
		run = commands[os.Args[1]]
	}
	if run == nil {
		names := make([]string, 0, len(commands))
		for name := range commands {
			names = append(names, name)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: istiocheck %s\n", strings.Join(names, "|"))
		os.Exit(2)
	}
	// Istio's logger writes to stdout by default; keep stdout for results.
	opts := log.DefaultOptions()
	opts.OutputPaths = []string{"stderr"}
	if err := log.Configure(opts); err != nil {
		fmt.Fprintln(os.Stderr, "istiocheck:", err)
	}
	code, err := run(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "istiocheck:", err)
		code = 2
	}
	os.Exit(code)
}

func printCRDs(_ io.Reader, w io.Writer) (int, error) {
	data, err := manifests.FS.ReadFile(crdFile)
	if err != nil {
		return 2, err
	}
	found := map[string][]byte{}
	r := kubeyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 2, err
		}
		var head struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return 2, err
		}
		found[head.Metadata.Name] = doc
	}
	for i, name := range wantedCRDs {
		doc, ok := found[name]
		if !ok {
			return 2, fmt.Errorf("%s not found in %s", name, crdFile)
		}
		if i > 0 {
			fmt.Fprintln(w, "---")
		}
		w.Write(bytes.TrimRight(doc, "\n"))
		fmt.Fprintln(w)
	}
	return 0, nil
}

// protoPackages maps an Istio API group to the proto package of its specs
// (the same protos istiod decodes every served version into).
var protoPackages = map[string]string{
	"networking.istio.io": "istio.networking.v1alpha3",
	"security.istio.io":   "istio.security.v1beta1",
}

type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
}

// validate returns exit code 1 if any object is invalid.
func validate(in io.Reader, w io.Writer) (int, error) {
	objs, err := readObjects(in)
	if err != nil {
		return 2, err
	}
	code := 0
	for _, raw := range objs {
		var obj object
		if err := json.Unmarshal(raw, &obj); err != nil {
			return 2, fmt.Errorf("cannot decode object: %v", err)
		}
		if obj.Metadata.Namespace == "" {
			obj.Metadata.Namespace = "default"
		}
		id := obj.Metadata.Namespace + "/" + obj.Metadata.Name
		group, version, _ := strings.Cut(obj.APIVersion, "/")
		// Istio registers one validation function per kind, named
		// "Validate<Kind>"; it is what istiod's webhook calls.
		check := validation.GetValidateFunc("Validate" + obj.Kind)
		mt, _ := protoregistry.GlobalTypes.FindMessageByName(
			protoreflect.FullName(protoPackages[group] + "." + obj.Kind))
		if check == nil || mt == nil {
			fmt.Fprintf(w, "skip %s: %s is not a supported Istio kind\n", id, obj.Kind)
			continue
		}
		if len(obj.Spec) == 0 {
			obj.Spec = json.RawMessage("{}")
		}
		spec := mt.New().Interface()
		// config.ApplyJSON is the lenient decoding istiod's webhook uses.
		if err := config.ApplyJSON(spec, string(obj.Spec)); err != nil {
			fmt.Fprintf(w, "invalid %s: cannot decode spec: %s\n", id, oneLine(err))
			code = 1
			continue
		}
		// The API server warns about unknown fields; do the same.
		if err := config.ApplyJSONStrict(mt.New().Interface(), string(obj.Spec)); err != nil {
			fmt.Fprintf(w, "warning %s: %s\n", id, oneLine(err))
		}
		cfg := config.Config{
			Meta: config.Meta{
				GroupVersionKind: config.GroupVersionKind{Group: group, Version: version, Kind: obj.Kind},
				Name:             obj.Metadata.Name,
				Namespace:        obj.Metadata.Namespace,
				Domain:           "cluster.local",
				Labels:           obj.Metadata.Labels,
				Annotations:      obj.Metadata.Annotations,
			},
			Spec: spec,
		}
		warn, err := check(cfg)
		for _, m := range split(warn) {
			fmt.Fprintf(w, "warning %s: %s\n", id, m)
		}
		if err != nil {
			fmt.Fprintf(w, "invalid %s: %s\n", id, strings.Join(split(err), "; "))
			code = 1
			continue
		}
		fmt.Fprintf(w, "ok %s\n", id)
	}
	return code, nil
}

// readObjects reads JSON or YAML documents and flattens any List items.
func readObjects(in io.Reader) ([]json.RawMessage, error) {
	var out []json.RawMessage
	d := kubeyaml.NewYAMLOrJSONDecoder(in, 4096)
	for {
		var doc json.RawMessage
		err := d.Decode(&doc)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out, err = appendObject(out, doc)
		if err != nil {
			return nil, err
		}
	}
}

func appendObject(out []json.RawMessage, doc json.RawMessage) ([]json.RawMessage, error) {
	if len(bytes.TrimSpace(doc)) == 0 || string(bytes.TrimSpace(doc)) == "null" {
		return out, nil
	}
	var head struct {
		Kind  string            `json:"kind"`
		Items []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(doc, &head); err != nil {
		return nil, err
	}
	if !strings.HasSuffix(head.Kind, "List") {
		return append(out, doc), nil
	}
	var err error
	for _, item := range head.Items {
		if out, err = appendObject(out, item); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// split turns a (multi)error into one line per wrapped error.
func split(err error) []string {
	if err == nil {
		return nil
	}
	if multi, ok := err.(interface{ WrappedErrors() []error }); ok {
		var res []string
		for _, e := range multi.WrappedErrors() {
			res = append(res, split(e)...)
		}
		return res
	}
	return []string{oneLine(err)}
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
