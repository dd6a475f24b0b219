package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The kube-state-metrics configuration (config/monitoring/kube-state-metrics)
// only names fields the CRDs have: a renamed status field would otherwise
// silently stop producing metrics.

type ksmConfig struct {
	Kind string `json:"kind"`
	Spec struct {
		Resources []struct {
			GroupVersionKind struct {
				Group   string `json:"group"`
				Version string `json:"version"`
				Kind    string `json:"kind"`
			} `json:"groupVersionKind"`
			MetricNamePrefix string              `json:"metricNamePrefix"`
			LabelsFromPath   map[string][]string `json:"labelsFromPath"`
			Metrics          []struct {
				Name string `json:"name"`
				Help string `json:"help"`
				Each struct {
					Type  string `json:"type"`
					Gauge struct {
						Path           []string            `json:"path"`
						ValueFrom      []string            `json:"valueFrom"`
						LabelsFromPath map[string][]string `json:"labelsFromPath"`
						LabelFromKey   string              `json:"labelFromKey"`
						NilIsZero      bool                `json:"nilIsZero"`
					} `json:"gauge"`
				} `json:"each"`
			} `json:"metrics"`
		} `json:"resources"`
	} `json:"spec"`
}

type schemaNode map[string]interface{}

func (n schemaNode) child(key string) (schemaNode, error) {
	if n["type"] == "array" {
		items, _ := n["items"].(map[string]interface{})
		n = items
	}
	props, _ := n["properties"].(map[string]interface{})
	next, ok := props[key].(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("no field %q", key)
	}
	return next, nil
}

// resolve walks a path; metadata fields are the API server's, not the CRD's.
func resolve(root schemaNode, path []string) (schemaNode, error) {
	if len(path) == 2 && path[0] == "metadata" {
		switch path[1] {
		case "name", "namespace", "generation", "uid", "creationTimestamp":
			return schemaNode{"type": "string"}, nil
		}
		return nil, fmt.Errorf("metadata.%s is not a field this check knows", path[1])
	}
	node := root
	for _, key := range path {
		var err error
		if node, err = node.child(key); err != nil {
			return nil, fmt.Errorf("%s: %w", strings.Join(path, "."), err)
		}
	}
	return node, nil
}

func crdSchema(t *testing.T, kind string) schemaNode {
	t.Helper()
	files, _ := filepath.Glob("../../../config/crd/*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var crd struct {
			Spec struct {
				Group string `json:"group"`
				Names struct {
					Kind string `json:"kind"`
				} `json:"names"`
				Versions []struct {
					Name   string `json:"name"`
					Schema struct {
						OpenAPIV3Schema map[string]interface{} `json:"openAPIV3Schema"`
					} `json:"schema"`
				} `json:"versions"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(data, &crd); err != nil {
			t.Fatal(err)
		}
		if crd.Spec.Names.Kind == kind && len(crd.Spec.Versions) > 0 {
			return crd.Spec.Versions[0].Schema.OpenAPIV3Schema
		}
	}
	t.Fatalf("no CRD for %s in config/crd", kind)
	return nil
}

func TestKubeStateMetricsConfigMatchesTheCRDs(t *testing.T) {
	data, err := os.ReadFile("../../../config/monitoring/kube-state-metrics/custom-resource-state.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var config ksmConfig
	if err := yaml.UnmarshalStrict(data, &config); err != nil {
		t.Fatalf("custom-resource-state.yaml: %v", err)
	}
	if config.Kind != "CustomResourceStateMetrics" || len(config.Spec.Resources) != 2 {
		t.Fatalf("want both kinds in a CustomResourceStateMetrics, got %s with %d", config.Kind, len(config.Spec.Resources))
	}
	checked := 0
	for _, resource := range config.Spec.Resources {
		gvk := resource.GroupVersionKind
		if gvk.Group != "lifeboat.dev" || gvk.Version != "v1alpha1" {
			t.Errorf("%s: group/version %s/%s", gvk.Kind, gvk.Group, gvk.Version)
		}
		root := crdSchema(t, gvk.Kind)
		for label, path := range resource.LabelsFromPath {
			if _, err := resolve(root, path); err != nil {
				t.Errorf("%s label %s: %v", gvk.Kind, label, err)
			}
		}
		for _, metric := range resource.Metrics {
			where := gvk.Kind + " metric " + metric.Name
			gauge := metric.Each.Gauge
			if metric.Each.Type != "Gauge" || metric.Help == "" {
				t.Errorf("%s: want a Gauge with help", where)
			}
			node, err := resolve(root, gauge.Path)
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			checked++
			for label, sub := range gauge.LabelsFromPath {
				if _, err := resolve(node, sub); err != nil {
					t.Errorf("%s label %s: %v", where, label, err)
				}
			}
			if len(gauge.ValueFrom) > 0 {
				if _, err := resolve(node, gauge.ValueFrom); err != nil {
					t.Errorf("%s valueFrom: %v", where, err)
				}
			}
			switch {
			case gauge.LabelFromKey != "":
				if node["type"] != "object" {
					t.Errorf("%s: labelFromKey needs an object, %v is %v", where, gauge.Path, node["type"])
				}
			case node["type"] == "array":
				if len(gauge.ValueFrom) == 0 {
					t.Errorf("%s: a list needs valueFrom", where)
				}
			case node["type"] == "object":
				t.Errorf("%s: %v is an object, not a value", where, gauge.Path)
			}
		}
	}
	if checked < 10 {
		t.Errorf("only %d metrics checked", checked)
	}
	// The check itself notices a wrong field.
	if _, err := resolve(crdSchema(t, "ImageBackupPolicy"), []string{"status", "lastSuccessTime"}); err == nil {
		t.Error("a field that does not exist resolved")
	}
}
