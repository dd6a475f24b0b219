// lifeboat-health tells what Flux and Argo CD make of Lifeboat objects.
//
//	lifeboat-health [--argocd-cm FILE] [FILE|-]...
//
// Reads Kubernetes objects (YAML or JSON, several documents, or a List such
// as `kubectl get -o json` prints) from the files or stdin, and prints one
// JSON line per object:
//
//	{"kind":"ImageBackupPolicy","namespace":"ns","name":"p","generation":1,
//	 "kstatus":{"status":"Current","message":"..."},
//	 "argocd":{"status":"Healthy","message":"..."}}
//
// "kstatus" is sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, the
// library Flux waits with; "argocd" is the health script of the argocd-cm
// ConfigMap given with --argocd-cm (default
// config/gitops/argocd/argocd-cm.yaml), run in an embedded Lua interpreter
// the way Argo CD runs it. Exit status 1 on any error.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// Report is one output line.
type Report struct {
	Kind       string  `json:"kind"`
	Namespace  string  `json:"namespace"`
	Name       string  `json:"name"`
	Generation int64   `json:"generation"`
	Kstatus    Health  `json:"kstatus"`
	ArgoCD     *Health `json:"argocd,omitempty"`
}

func main() {
	argocdCM := flag.String("argocd-cm", "config/gitops/argocd/argocd-cm.yaml", "argocd-cm ConfigMap with the health scripts (\"\" to skip Argo CD)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: lifeboat-health [--argocd-cm FILE] [FILE|-]...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(*argocdCM, flag.Args(), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "lifeboat-health:", err)
		os.Exit(1)
	}
}

func run(argocdCM string, files []string, stdin io.Reader, out io.Writer) error {
	var config ArgoConfig
	if argocdCM != "" {
		manifest, err := os.ReadFile(argocdCM)
		if err != nil {
			return err
		}
		if config, err = ParseArgoConfigMap(manifest); err != nil {
			return err
		}
	}
	if len(files) == 0 {
		files = []string{"-"}
	}
	encoder := json.NewEncoder(out)
	for _, file := range files {
		var data []byte
		var err error
		if file == "-" {
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(file)
		}
		if err != nil {
			return err
		}
		objects, err := decodeObjects(data)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		for _, obj := range objects {
			report, err := evaluate(config, obj)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			if err := encoder.Encode(report); err != nil {
				return err
			}
		}
	}
	return nil
}

func evaluate(config ArgoConfig, obj map[string]interface{}) (Report, error) {
	u := unstructured.Unstructured{Object: obj}
	report := Report{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(), Generation: u.GetGeneration()}
	var err error
	if report.Kstatus, err = Kstatus(obj); err != nil {
		return report, fmt.Errorf("%s %s: kstatus: %w", report.Kind, report.Name, err)
	}
	if config != nil {
		script, err := config.ScriptFor(obj)
		if err != nil {
			return report, err
		}
		health, err := ArgoHealth(script, obj)
		if err != nil {
			return report, fmt.Errorf("%s %s: %w", report.Kind, report.Name, err)
		}
		report.ArgoCD = &health
	}
	return report, nil
}

var documentSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeObjects reads every object of a YAML or JSON stream, expanding Lists.
func decodeObjects(data []byte) ([]map[string]interface{}, error) {
	var objects []map[string]interface{}
	for _, doc := range documentSeparator.Split(string(data), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		obj, err := decodeObject([]byte(doc))
		if err != nil {
			return nil, err
		}
		if obj == nil {
			continue
		}
		if items, ok := obj["items"].([]interface{}); ok && strings.HasSuffix(fmt.Sprint(obj["kind"]), "List") {
			for _, item := range items {
				if m, ok := item.(map[string]interface{}); ok {
					objects = append(objects, m)
				}
			}
			continue
		}
		objects = append(objects, obj)
	}
	if len(objects) == 0 {
		return nil, errors.New("no objects in the input")
	}
	return objects, nil
}

// decodeObject reads one YAML or JSON document the way the API machinery
// does: whole numbers become int64 (kstatus reads generations as int64),
// others float64.
func decodeObject(doc []byte) (map[string]interface{}, error) {
	jsonDoc, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	decoder := json.NewDecoder(bytes.NewReader(jsonDoc))
	decoder.UseNumber()
	var value interface{}
	if err := decoder.Decode(&value); err != nil {
		return nil, err
	}
	if value == nil {
		return nil, nil
	}
	obj, ok := numbersToGo(value).(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("a document is not an object")
	}
	return obj, nil
}

func numbersToGo(value interface{}) interface{} {
	switch v := value.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		f, _ := v.Float64()
		return f
	case []interface{}:
		for i := range v {
			v[i] = numbersToGo(v[i])
		}
		return v
	case map[string]interface{}:
		for k := range v {
			v[k] = numbersToGo(v[k])
		}
		return v
	default:
		return v
	}
}
