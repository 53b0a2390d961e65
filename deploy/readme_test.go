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
// docs/ name (docker run lines, the compose table, the build stages) are the
// ones compose.yaml runs and the Dockerfile builds from; deploy/README.md
// names them fully qualified, as the files do, the others may name them
// short (docker.io implied). And the Go release they ask for is go.mod's.
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
	var known []string
	for _, s := range f.Services {
		known = append(known, s.Image)
	}
	for _, in := range dockerfile(t) {
		if w := strings.Fields(in.args); in.cmd == "FROM" && len(w) > 0 {
			known = append(known, w[0])
		}
	}
	images := map[string]string{} // short repository -> image
	for _, img := range known {
		repo, _ := imageRef(img)
		images[shortRepo(repo)] = img
	}
	ref := regexp.MustCompile(`(?:[a-z0-9][a-z0-9.:-]*/)*(?:nats|jaeger|prometheus|grafana|grafana-oss|golang|static-debian\d+):[A-Za-z0-9._-]*[A-Za-z0-9]`)
	docs := map[string]string{"README.md": readFile(t, "../README.md"), "deploy/README.md": string(readBytes(t, "README.md"))}
	for _, name := range moduleDocs(t) {
		docs[name] = readFile(t, "../"+name)
	}
	for readme, text := range docs {
		for _, m := range ref.FindAllString(text, -1) {
			repo, _ := imageRef(m)
			want, ok := images[shortRepo(repo)]
			if !ok && strings.HasPrefix(shortRepo(repo), "jaegertracing/") {
				want, ok = images["jaegertracing/jaeger"]
			}
			switch {
			case !ok:
				t.Errorf("%s names %s, an image neither compose.yaml nor the Dockerfile uses", readme, m)
			case readme == "deploy/README.md" && m != want:
				t.Errorf("%s names %s; the deploy files use %q (fully qualified)", readme, m, want)
			case readme != "deploy/README.md" && normalImage(m) != normalImage(want):
				t.Errorf("%s names %s; the deploy files use %q", readme, m, want)
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

// shortRepo drops the docker.io registry and its library/ namespace:
// docker.io/library/nats gives nats.
func shortRepo(repo string) string {
	repo = strings.TrimPrefix(repo, "docker.io/")
	return strings.TrimPrefix(repo, "library/")
}

// normalImage is an image reference with docker.io and library/ implied.
func normalImage(ref string) string {
	repo, tag := imageRef(ref)
	return shortRepo(repo) + ":" + tag
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

// TestManifestComposeVersionIsDocumented: compose.yaml has a top-level
// name, which Compose v1 (docker-compose 1.29) refuses; its header and the
// README say that Compose v2 is needed.
func TestManifestComposeVersionIsDocumented(t *testing.T) {
	t.Parallel()
	var f struct {
		Name string `yaml:"name"`
	}
	compose := readBytes(t, "compose.yaml")
	if err := yaml.Unmarshal(compose, &f); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	if f.Name == "" {
		t.Skip("no top-level name: Compose v1 would read the file")
	}
	header, _, _ := strings.Cut(string(compose), "\nname:")
	for file, text := range map[string]string{"compose.yaml's header": header, "deploy/README.md": string(readBytes(t, "README.md"))} {
		for _, want := range []string{"Compose v2", "1.29"} {
			if !strings.Contains(text, want) {
				t.Errorf("%s does not say %q: the top-level name needs Compose v2, and docker-compose 1.29 refuses it", file, want)
			}
		}
	}
}
