package deploy_test

import (
	"regexp"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// TestManifestReadmesAgree: the images the READMEs name for the local stack
// (docker run lines, the compose table) are the ones compose.yaml runs, and
// the Go release the README asks for is go.mod's.
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
	for readme, file := range map[string]string{"README.md": "../README.md", "deploy/README.md": "README.md"} {
		text := readFile(t, file)
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
	mentions := regexp.MustCompile(`\bGo (1\.\d+(?:\.\d+)?)\b`).FindAllStringSubmatch(readFile(t, "../README.md"), -1)
	if len(mentions) == 0 {
		t.Error("README.md does not say which Go it needs")
	}
	for _, m := range mentions {
		if m[1] != goMod[1] {
			t.Errorf("README.md asks for Go %s; go.mod's go directive is %s", m[1], goMod[1])
		}
	}
}
