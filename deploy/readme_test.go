package deploy_test

import (
	"io/fs"
	"os"
	"regexp"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// TestManifestReadmesAgree: the images the READMEs and the documents under
// docs/ name for the local stack (docker run lines, the compose table) are the
// ones compose.yaml runs, and the Go release they ask for is go.mod's.
func TestManifestReadmesAgree(t *testing.T) {
	t.Parallel()
	var f struct {
		Services map[string]struct {
			Image string `yaml:"image"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(readBytes(t, "compose.yaml"), &f); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	images := map[string]string{} // repository -> image
	for _, s := range f.Services {
		if repo, _, ok := strings.Cut(s.Image, ":"); ok {
			images[repo] = s.Image
		}
	}
	ref := regexp.MustCompile(`\b(nats|jaegertracing/[a-z-]+|prom/prometheus|grafana/grafana(?:-oss)?):[A-Za-z0-9._-]+`)
	docs := map[string]string{"README.md": readFile(t, "../README.md"), "deploy/README.md": string(readBytes(t, "README.md"))}
	for _, name := range moduleDocs(t) {
		docs[name] = readFile(t, "../"+name)
	}
	for readme, text := range docs {
		for _, m := range ref.FindAllStringSubmatch(text, -1) {
			want, ok := images[m[1]]
			if !ok && strings.HasPrefix(m[1], "jaegertracing/") {
				want = images["jaegertracing/jaeger"]
			}
			if m[0] != want {
				t.Errorf("%s names %s; compose.yaml runs %q", readme, m[0], want)
			}
		}
	}

	goMod := regexp.MustCompile(`(?m)^go (\S+)`).FindStringSubmatch(readFile(t, "../go.mod"))
	if goMod == nil {
		t.Fatal("go.mod: no go directive")
	}
	goRelease := regexp.MustCompile(`\bGo (1\.\d+(?:\.\d+)?)\b`)
	if len(goRelease.FindAllStringSubmatch(docs["README.md"], -1)) == 0 {
		t.Error("README.md does not say which Go it needs")
	}
	for name, text := range docs {
		for _, m := range goRelease.FindAllStringSubmatch(text, -1) {
			if m[1] != goMod[1] {
				t.Errorf("%s names Go %s; go.mod's go directive is %s", name, m[1], goMod[1])
			}
		}
	}
}

// moduleDocs lists the documents under docs/ (paths from the module root).
func moduleDocs(t *testing.T) []string {
	t.Helper()
	root, err := os.OpenRoot("..")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = root.Close() }()
	names, err := fs.Glob(root.FS(), "docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatal("no documents under docs/")
	}
	return names
}
