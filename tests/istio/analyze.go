package main

import (
	"bytes"
	"fmt"
	"io"

	"istio.io/istio/pkg/config/analysis/analyzers"
	"istio.io/istio/pkg/config/analysis/diag"
	"istio.io/istio/pkg/config/analysis/local"
)

// analyze runs istioctl analyze's analyzers over the objects on stdin in
// file-only mode (no cluster), with Istio's default ingress gateway added
// as istioctl does. Exit code 1 if any message is at Error level.
func analyze(in io.Reader, w io.Writer) (int, error) {
	objs, err := readObjects(in)
	if err != nil {
		return 2, err
	}
	// Lists are flattened already; hand the objects over as a YAML stream.
	var stream bytes.Buffer
	for _, o := range objs {
		stream.WriteString("---\n")
		stream.Write(o)
		stream.WriteString("\n")
	}
	sa := local.NewSourceAnalyzer(analyzers.AllCombined(), "", "istio-system", nil)
	if err := sa.AddDefaultResources(); err != nil {
		return 2, err
	}
	if err := sa.AddReaderKubeSource([]local.ReaderSource{{Name: "stdin", Reader: &stream}}); err != nil {
		return 2, err
	}
	cancel := make(chan struct{})
	defer close(cancel)
	result, err := sa.Analyze(cancel)
	if err != nil {
		return 2, err
	}
	code := 0
	for _, m := range result.Messages {
		fmt.Fprintln(w, m.String())
		if m.Type.Level() == diag.Error {
			code = 1
		}
	}
	if len(result.Messages) == 0 {
		fmt.Fprintln(w, "no issues")
	}
	return code, nil
}
