package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The health checks live in the repository's config/gitops/argocd.
const argoDir = "../../../config/gitops/argocd"

type healthTests struct {
	Tests []struct {
		HealthStatus struct {
			Status  string `json:"status"`
			Message string `json:"message"`
		} `json:"healthStatus"`
		Kstatus   string `json:"kstatus"`
		InputPath string `json:"inputPath"`
	} `json:"tests"`
}

func loadConfigMap(t *testing.T) ArgoConfig {
	t.Helper()
	manifest, err := os.ReadFile(filepath.Join(argoDir, "argocd-cm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	config, err := ParseArgoConfigMap(manifest)
	if err != nil {
		t.Fatal(err)
	}
	return config
}

func scriptDirs(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(argoDir, "*", "*", "health.lua"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != 2 {
		t.Fatalf("want the health checks of both kinds, found %v", dirs)
	}
	for i := range dirs {
		dirs[i] = filepath.Dir(dirs[i])
	}
	return dirs
}

// The ConfigMap users install carries exactly the Lua files (the generator
// did not mangle them) under the keys Argo CD looks up.
func TestConfigMapCarriesTheScripts(t *testing.T) {
	config := loadConfigMap(t)
	dirs := scriptDirs(t)
	if len(config) != len(dirs) {
		t.Fatalf("argocd-cm has %d health scripts, the repository %d", len(config), len(dirs))
	}
	for _, dir := range dirs {
		script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
		if err != nil {
			t.Fatal(err)
		}
		key := filepath.Base(filepath.Dir(dir)) + "_" + filepath.Base(dir)
		if config[key] != string(script) {
			t.Errorf("argocd-cm's %s differs from %s/health.lua: run hack/render-integrations.sh", key, dir)
		}
	}
}

// Every fixture of health_test.yaml gives the expected Argo CD health (from
// the ConfigMap's script and from the file) and kstatus status.
func TestFixtures(t *testing.T) {
	config := loadConfigMap(t)
	for _, dir := range scriptDirs(t) {
		var tests healthTests
		data, err := os.ReadFile(filepath.Join(dir, "health_test.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(data, &tests); err != nil {
			t.Fatalf("%s/health_test.yaml: %v", dir, err)
		}
		if len(tests.Tests) < 5 {
			t.Fatalf("%s: only %d cases", dir, len(tests.Tests))
		}
		script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, tc := range tests.Tests {
			name := filepath.Base(filepath.Dir(dir)) + "/" + filepath.Base(dir) + "/" + tc.InputPath
			t.Run(name, func(t *testing.T) {
				data, err := os.ReadFile(filepath.Join(dir, tc.InputPath))
				if err != nil {
					t.Fatal(err)
				}
				obj, err := decodeObject(data)
				if err != nil {
					t.Fatal(err)
				}
				fromFile, err := ArgoHealth(string(script), obj)
				if err != nil {
					t.Fatal(err)
				}
				report, err := evaluate(config, obj)
				if err != nil {
					t.Fatal(err)
				}
				if *report.ArgoCD != fromFile {
					t.Errorf("the ConfigMap's script says %+v, health.lua %+v", *report.ArgoCD, fromFile)
				}
				if fromFile.Status != tc.HealthStatus.Status {
					t.Errorf("Argo CD health %q (%s), want %q", fromFile.Status, fromFile.Message, tc.HealthStatus.Status)
				}
				if tc.HealthStatus.Message != "" && fromFile.Message != tc.HealthStatus.Message {
					t.Errorf("Argo CD message %q, want %q", fromFile.Message, tc.HealthStatus.Message)
				}
				if fromFile.Message == "" {
					t.Error("Argo CD health without a message")
				}
				if report.Kstatus.Status != tc.Kstatus {
					t.Errorf("kstatus %q (%s), want %q", report.Kstatus.Status, report.Kstatus.Message, tc.Kstatus)
				}
			})
			seen[tc.HealthStatus.Status] = true
		}
		for _, want := range []string{"Healthy", "Progressing", "Degraded"} {
			if !seen[want] {
				t.Errorf("%s: no case for %s", dir, want)
			}
		}
	}
}

// The interpreter really runs the script: errors and bad results surface.
func TestArgoHealthRejectsBrokenScripts(t *testing.T) {
	obj := map[string]interface{}{"metadata": map[string]interface{}{"generation": int64(1)}}
	for script, want := range map[string]string{
		`return {status = "Fine"}`:            "does not know",
		`return 42`:                           "not a table",
		`error("boom")`:                       "boom",
		`return {status = os.getenv("HOME")}`: "getenv", // no os library
	} {
		if _, err := ArgoHealth(script, obj); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one mentioning %q", script, err, want)
		}
	}
	h, err := ArgoHealth(`return {status = "Healthy", message = "gen " .. obj.metadata.generation}`, obj)
	if err != nil || h.Status != "Healthy" || h.Message != "gen 1" {
		t.Errorf("got %+v, %v", h, err)
	}
}

// Arrays are 1-based tables and JSON numbers arrive as numbers.
func TestObjectConversion(t *testing.T) {
	obj, err := decodeObject([]byte(`{"metadata":{"generation":3},"status":{"observedGeneration":-1,"conditions":[{"type":"A"},{"type":"B"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	h, err := ArgoHealth(`return {status = "Healthy", message = obj.status.conditions[2].type .. #obj.status.conditions .. (obj.status.observedGeneration + obj.metadata.generation)}`, obj)
	if err != nil || h.Message != "B22" {
		t.Errorf("got %+v, %v", h, err)
	}
}

// The command reads Lists and multi-document YAML and prints JSON lines.
func TestRunPrintsOneLinePerObject(t *testing.T) {
	input := `{"apiVersion":"v1","kind":"List","items":[
	  {"apiVersion":"lifeboat.dev/v1alpha1","kind":"ImageRestore","metadata":{"name":"a","namespace":"n","generation":1},"status":{"observedGeneration":-1}},
	  {"apiVersion":"lifeboat.dev/v1alpha1","kind":"ImageBackupPolicy","metadata":{"name":"b","namespace":"n","generation":2},"status":{"observedGeneration":2,"conditions":[{"type":"Ready","status":"True","reason":"Protected","message":"ok"}]}}]}
---
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: c, namespace: n, generation: 1}
status: {observedGeneration: 1, conditions: [{type: Stalled, status: "True", reason: InvalidSchedule, message: bad}]}
`
	var out bytes.Buffer
	if err := run(filepath.Join(argoDir, "argocd-cm.yaml"), nil, strings.NewReader(input), &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{"a InProgress Progressing", "b Current Healthy", "c Failed Degraded"}
	if len(lines) != len(want) {
		t.Fatalf("%d lines: %s", len(lines), out.String())
	}
	for i, line := range lines {
		var r Report
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		got := r.Name + " " + r.Kstatus.Status + " " + r.ArgoCD.Status
		if got != want[i] {
			t.Errorf("line %d: %s, want %s", i, got, want[i])
		}
	}
	if err := run("", nil, strings.NewReader("kind: Nothing\n---\n"), &out); err != nil {
		t.Errorf("kstatus only: %v", err)
	}
	if err := run("", nil, strings.NewReader(""), &out); err == nil {
		t.Error("empty input accepted")
	}
}
