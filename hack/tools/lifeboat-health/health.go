package main

import (
	"fmt"
	"sort"
	"strings"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// Health is what one tool says about one object.
type Health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// Kstatus is the status Flux (kustomize-controller's health checks, `flux
// build`/`kstatus`-based waits) computes for an object.
func Kstatus(obj map[string]interface{}) (Health, error) {
	result, err := status.Compute(&unstructured.Unstructured{Object: obj})
	if err != nil {
		return Health{}, err
	}
	return Health{Status: result.Status.String(), Message: result.Message}, nil
}

// argoHealthStatuses are the values Argo CD accepts from a health script.
var argoHealthStatuses = map[string]bool{
	"Healthy":     true,
	"Progressing": true,
	"Degraded":    true,
	"Suspended":   true,
	"Missing":     true,
	"Unknown":     true,
}

// ArgoHealth runs an Argo CD health script against an object the way Argo
// CD does: the object is the global `obj` (JSON turned into Lua tables,
// arrays 1-based), only the base, table, string and math libraries are
// open, and the script returns a table with `status` and `message`.
func ArgoHealth(script string, obj map[string]interface{}) (Health, error) {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return Health{}, fmt.Errorf("health script failed: %w", err)
	}
	table, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return Health{}, fmt.Errorf("health script returned %s, not a table", L.Get(-1).Type())
	}
	h := Health{
		Status:  lua.LVAsString(table.RawGetString("status")),
		Message: lua.LVAsString(table.RawGetString("message")),
	}
	if !argoHealthStatuses[h.Status] {
		return Health{}, fmt.Errorf("health script returned status %q, which Argo CD does not know", h.Status)
	}
	return h, nil
}

// toLua converts decoded JSON into Lua values: objects and arrays become
// tables (arrays indexed from 1), null becomes nil.
func toLua(L *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(float64(v))
	case int:
		return lua.LNumber(float64(v))
	case []interface{}:
		t := L.NewTable()
		for _, item := range v {
			t.Append(toLua(L, item))
		}
		return t
	case map[string]interface{}:
		t := L.NewTable()
		for key, item := range v {
			t.RawSetString(key, toLua(L, item))
		}
		return t
	default:
		return lua.LString(fmt.Sprint(v))
	}
}

// ArgoConfig is the health part of an argocd-cm ConfigMap: the script for
// each "group_Kind" key of `resource.customizations.health.<group>_<kind>`.
type ArgoConfig map[string]string

const healthKeyPrefix = "resource.customizations.health."

// ParseArgoConfigMap reads the health scripts out of an argocd-cm manifest.
func ParseArgoConfigMap(manifest []byte) (ArgoConfig, error) {
	var cm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Data map[string]string `json:"data"`
	}
	if err := yaml.UnmarshalStrict(manifest, &cm); err != nil {
		return nil, fmt.Errorf("argocd-cm: %w", err)
	}
	if cm.APIVersion != "v1" || cm.Kind != "ConfigMap" || cm.Metadata.Name != "argocd-cm" {
		return nil, fmt.Errorf("not the argocd-cm ConfigMap (kind %q, name %q)", cm.Kind, cm.Metadata.Name)
	}
	config := ArgoConfig{}
	for key, script := range cm.Data {
		if strings.HasPrefix(key, healthKeyPrefix) {
			config[strings.TrimPrefix(key, healthKeyPrefix)] = script
		}
	}
	if len(config) == 0 {
		return nil, fmt.Errorf("argocd-cm holds no %s* keys", healthKeyPrefix)
	}
	return config, nil
}

// ScriptFor finds the script Argo CD would use for an object, by its
// apiVersion's group and its kind.
func (c ArgoConfig) ScriptFor(obj map[string]interface{}) (string, error) {
	u := unstructured.Unstructured{Object: obj}
	gvk := u.GroupVersionKind()
	key := gvk.Group + "_" + gvk.Kind
	script, ok := c[key]
	if !ok {
		keys := make([]string, 0, len(c))
		for k := range c {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return "", fmt.Errorf("no health script for %s (have %s)", key, strings.Join(keys, ", "))
	}
	return script, nil
}
