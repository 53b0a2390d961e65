package deploy_test

// A small kustomize: it renders the kustomizations under k8s/ for the
// features they use, so that the manifests tests check what `kubectl apply
// -k` applies (the base with each entry point's patches), and compares its
// output with the real `kubectl kustomize` when kubectl is installed.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os/exec"
	"path"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// k8sEntryPoints are the directories an operator applies with `kubectl
// apply -k`, and the stream and bucket replicas each must set: k8s/ for a
// single NATS server, k8s/cluster/ for a three-node JetStream cluster.
var k8sEntryPoints = map[string]string{"k8s": "1", "k8s/cluster": "3"}

// kustomizationFile is the part of kustomization.yaml the renderer applies.
// Any other field fails the test: the renderer must not silently ignore
// what kustomize would do.
type kustomizationFile struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Namespace  string   `yaml:"namespace"`
	Resources  []string `yaml:"resources"`
	Images     []struct {
		Name    string `yaml:"name"`
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
		Digest  string `yaml:"digest"`
	} `yaml:"images"`
	Patches []struct {
		Path string `yaml:"path"`
	} `yaml:"patches"`
}

// readKustomization reads dir/kustomization.yaml strictly.
func readKustomization(t *testing.T, dir string) kustomizationFile {
	t.Helper()
	name := path.Join(dir, "kustomization.yaml")
	dec := yaml.NewDecoder(bytes.NewReader(readBytes(t, name)))
	dec.KnownFields(true)
	var k kustomizationFile
	if err := dec.Decode(&k); err != nil {
		t.Fatalf("%s: %v (this test renders resources, namespace, images and patches files only)", name, err)
	}
	return k
}

// kustomize renders the kustomization in dir (relative to deploy/) as
// kustomize does for these fields: resources (files, and directories with
// their own kustomization) in order, then patches (strategic merge of
// maps; a list or a scalar replaces), the namespace (on every object but a
// Namespace) and the images (name, newName, newTag, digest), applied from
// the innermost kustomization out.
func kustomize(t *testing.T, dir string) []map[string]any {
	t.Helper()
	k := readKustomization(t, dir)
	var objs []map[string]any
	for _, r := range k.Resources {
		p := path.Join(dir, r)
		st, err := fs.Stat(files, p)
		if err != nil {
			t.Fatalf("%s/kustomization.yaml: resource %s: %v", dir, r, err)
		}
		if st.IsDir() {
			objs = append(objs, kustomize(t, p)...)
			continue
		}
		objs = append(objs, yamlDocs(t, p)...)
	}
	for _, p := range k.Patches {
		if p.Path == "" {
			t.Fatalf("%s/kustomization.yaml: a patch without path (this test applies patch files only)", dir)
		}
		for _, patch := range yamlDocs(t, path.Join(dir, p.Path)) {
			target := findObject(objs, str(patch["kind"]), str(dig(patch, "metadata", "name")))
			if target == nil {
				t.Fatalf("%s: patch %s: no %s %s among the resources", dir, p.Path, patch["kind"], dig(patch, "metadata", "name"))
			}
			mergeMaps(target, patch)
		}
	}
	if k.Namespace != "" {
		for _, o := range objs {
			if o["kind"] != "Namespace" {
				meta, _ := o["metadata"].(map[string]any)
				meta["namespace"] = k.Namespace
			}
		}
	}
	for _, img := range k.Images {
		for _, o := range objs {
			for _, c := range podContainers(o) {
				name, tag := imageRef(str(c["image"]))
				if name != img.Name {
					continue
				}
				if img.NewName != "" {
					name = img.NewName
				}
				if img.NewTag != "" {
					tag = img.NewTag
				}
				ref := name
				if tag != "" {
					ref += ":" + tag
				}
				if img.Digest != "" {
					ref += "@" + img.Digest
				}
				c["image"] = ref
			}
		}
	}
	return objs
}

// yamlDocs decodes every document of a YAML file.
func yamlDocs(t *testing.T, name string) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(readBytes(t, name)))
	var out []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if doc != nil {
			out = append(out, doc)
		}
	}
}

// mergeMaps merges patch into dst: maps recursively, anything else replaces.
func mergeMaps(dst, patch map[string]any) {
	for k, v := range patch {
		pm, ok := v.(map[string]any)
		dm, dok := dst[k].(map[string]any)
		if ok && dok {
			mergeMaps(dm, pm)
			continue
		}
		dst[k] = v
	}
}

func findObject(objs []map[string]any, kind, name string) map[string]any {
	for _, o := range objs {
		if o["kind"] == kind && dig(o, "metadata", "name") == name {
			return o
		}
	}
	return nil
}

// podContainers are the containers of a workload's pod template.
func podContainers(o map[string]any) []map[string]any {
	var out []map[string]any
	for _, key := range []string{"initContainers", "containers"} {
		list, _ := dig(o, "spec", "template", "spec", key).([]any)
		for _, c := range list {
			if m, ok := c.(map[string]any); ok {
				out = append(out, m)
			}
		}
	}
	return out
}

// dig follows keys through nested maps; nil when one is missing.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// k8sObjects renders an entry point into the objects the manifests tests
// check, plus the Secret example, which is not applied but shows the
// Secret's shape.
func k8sObjects(t *testing.T, dir string) []k8sObject {
	t.Helper()
	var objs []k8sObject
	add := func(file string, doc map[string]any) {
		var node yaml.Node
		if err := node.Encode(doc); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var o k8sObject
		if err := node.Decode(&o); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
			t.Fatalf("%s: a document without apiVersion, kind or metadata.name", file)
		}
		o.file, o.node = file, &node
		objs = append(objs, o)
	}
	for _, doc := range kustomize(t, dir) {
		add(dir, doc)
	}
	for _, doc := range yamlDocs(t, secretExample) {
		add(secretExample, doc)
	}
	return objs
}

// secretExample is the shape of the credentials Secret (never applied).
const secretExample = "k8s/secret.example.yaml"

// TestManifestKustomizeAgreesWithKubectl: what this test's renderer makes
// of each entry point is what `kubectl kustomize` makes of it, object for
// object. Skipped where kubectl is not installed.
func TestManifestKustomizeAgreesWithKubectl(t *testing.T) {
	t.Parallel()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not installed: the renderer is not compared with kustomize")
	}
	for _, dir := range sortedKeys(k8sEntryPoints) {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			out, err := exec.CommandContext(t.Context(), kubectl, "kustomize", dir).Output() //nolint:gosec // a fixed directory of this repository
			if err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, ee.Stderr)
				}
				t.Fatalf("kubectl kustomize %s: %v", dir, err)
			}
			want := normalize(t, decodeAll(t, out))
			got := normalize(t, kustomize(t, dir))
			if !reflect.DeepEqual(got, want) {
				g, _ := yaml.Marshal(got)
				w, _ := yaml.Marshal(want)
				t.Errorf("this test renders %s differently from kubectl kustomize:\n--- test\n%s\n--- kubectl\n%s", dir, g, w)
			}
		})
	}
}

// decodeAll decodes a multi-document YAML stream.
func decodeAll(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var out []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, doc)
	}
}

// normalize round-trips the objects through YAML (so that both sides hold
// the same Go types) and sorts them by kind and name.
func normalize(t *testing.T, objs []map[string]any) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		return str(out[i]["kind"])+"/"+str(dig(out[i], "metadata", "name")) < str(out[j]["kind"])+"/"+str(dig(out[j], "metadata", "name"))
	})
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestManifestKustomizeReplicas: the single-server entry point creates the
// event stream and the bucket with one replica, which a single NATS server
// accepts; the cluster entry point with three. Both values pass serve's
// validation (TestManifestKubernetes runs serve with each).
func TestManifestKustomizeReplicas(t *testing.T) {
	t.Parallel()
	for _, dir := range sortedKeys(k8sEntryPoints) {
		want := k8sEntryPoints[dir]
		cm := findObject(kustomize(t, dir), "ConfigMap", "queue-janitor")
		if cm == nil {
			t.Fatalf("%s: no ConfigMap queue-janitor", dir)
		}
		for _, name := range []string{"QUEUE_JANITOR_EVENT_STREAM_REPLICAS", "QUEUE_JANITOR_KV_REPLICAS"} {
			if got := str(dig(cm, "data", name)); got != want {
				t.Errorf("%s: %s = %q, want %q", dir, name, got, want)
			}
		}
	}
}

// TestManifestKustomizePathsInDocs: every directory the docs tell an
// operator to `kubectl apply -k` or `kubectl kustomize` holds a
// kustomization, and is an entry point (not the base alone).
func TestManifestKustomizePathsInDocs(t *testing.T) {
	t.Parallel()
	docs := map[string]string{"README.md": readFile(t, "README.md"), "deploy/README.md": string(readBytes(t, "README.md"))}
	for _, dir := range append(sortedKeys(k8sEntryPoints), "k8s/base") {
		docs["deploy/"+dir+"/kustomization.yaml"] = string(readBytes(t, dir+"/kustomization.yaml"))
	}
	cmd := regexp.MustCompile(`kubectl (?:apply -k|kustomize) (deploy/[A-Za-z0-9_./-]*[A-Za-z0-9_])`)
	seen := 0
	for name, text := range docs {
		for _, m := range cmd.FindAllStringSubmatch(text, -1) {
			seen++
			dir := strings.TrimPrefix(path.Clean(m[1]), "deploy/")
			if _, ok := k8sEntryPoints[dir]; !ok {
				t.Errorf("%s: %q: %s is not an entry point (want one of %v)", name, m[0], m[1], sortedKeys(k8sEntryPoints))
			}
			if _, err := fs.Stat(files, path.Join(dir, "kustomization.yaml")); err != nil {
				t.Errorf("%s: %q: %v", name, m[0], err)
			}
		}
	}
	if seen == 0 {
		t.Error("no kubectl apply -k in the docs")
	}
}
