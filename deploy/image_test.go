package deploy_test

import (
	"bytes"
	"debug/elf"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"

	"github.com/example/queue-janitor/cmd/queue-janitor/cli"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd   string // upper case: FROM, RUN, ...
	args  string
	stage int // index of the FROM it belongs to
}

// dockerfile reads deploy/Dockerfile.
func dockerfile(t *testing.T) []instruction {
	t.Helper()
	var out []instruction
	stage := -1
	var cur strings.Builder
	for _, line := range strings.Split(string(readBytes(t, "Dockerfile")), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cont, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(cont + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		cur.Reset()
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			stage++
		}
		out = append(out, instruction{cmd: cmd, args: strings.TrimSpace(args), stage: stage})
	}
	if stage < 1 {
		t.Fatalf("Dockerfile: want a multi-stage build, found %d stage(s)", stage+1)
	}
	return out
}

// finalStage returns the instructions of the last stage.
func finalStage(ins []instruction) []instruction {
	last := ins[len(ins)-1].stage
	var out []instruction
	for _, in := range ins {
		if in.stage == last {
			out = append(out, in)
		}
	}
	return out
}

// only returns the single instruction cmd among ins.
func only(t *testing.T, ins []instruction, cmd string) instruction {
	t.Helper()
	var found []instruction
	for _, in := range ins {
		if in.cmd == cmd {
			found = append(found, in)
		}
	}
	if len(found) != 1 {
		t.Fatalf("Dockerfile: want one %s in the stage, found %d", cmd, len(found))
	}
	return found[0]
}

// execForm parses a JSON-array (exec form) argument.
func execForm(t *testing.T, in instruction) []string {
	t.Helper()
	if !strings.HasPrefix(in.args, "[") {
		t.Fatalf("Dockerfile: %s %s: use the exec form [\"...\"], there is no shell in the image", in.cmd, in.args)
	}
	var out []string
	for _, m := range regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`).FindAllStringSubmatch(in.args, -1) {
		out = append(out, m[1])
	}
	return out
}

// imageUID is the numeric USER of the final stage.
func imageUID(t *testing.T) int64 {
	t.Helper()
	user := only(t, finalStage(dockerfile(t)), "USER").args
	uid, _, _ := strings.Cut(user, ":")
	n, err := strconv.ParseInt(uid, 10, 64)
	if err != nil {
		t.Fatalf("Dockerfile: USER %q: use the numeric uid, which Kubernetes' runAsNonRoot can verify", user)
	}
	return n
}

// goBuild is a go build command line split into words, with the version
// written as VERSION.
type goBuild struct {
	words []string
	out   string // the -o value
}

// dockerBuild is the go build of the Dockerfile's build stage.
func dockerBuild(t *testing.T) goBuild {
	t.Helper()
	for _, in := range dockerfile(t) {
		if in.cmd != "RUN" || !strings.Contains(in.args, "go build") {
			continue
		}
		w := shellWords(t, strings.ReplaceAll(in.args, "${VERSION}", "VERSION"))
		for len(w) > 0 && strings.HasPrefix(w[0], "--mount=") {
			w = w[1:]
		}
		return splitOut(t, w)
	}
	t.Fatal("Dockerfile: no RUN ... go build")
	return goBuild{}
}

// makeBuild is the go build of the Makefile's build target, variables
// expanded.
func makeBuild(t *testing.T) goBuild {
	t.Helper()
	mk := readFile(t, "../Makefile")
	ldflags := regexp.MustCompile(`(?m)^LDFLAGS\s*:?=\s*(.*)$`).FindStringSubmatch(mk)
	recipe := regexp.MustCompile(`(?m)^build:.*\n\t(.*)$`).FindStringSubmatch(mk)
	if ldflags == nil || recipe == nil {
		t.Fatal("Makefile: no LDFLAGS or no build target")
	}
	line := strings.NewReplacer("$(LDFLAGS)", strings.TrimSpace(ldflags[1]), "$(GO)", "go").Replace(recipe[1])
	line = strings.ReplaceAll(line, "$(VERSION)", "VERSION")
	return splitOut(t, shellWords(t, line))
}

// splitOut takes -o and its value out of a command line.
func splitOut(t *testing.T, w []string) goBuild {
	t.Helper()
	i := slices.Index(w, "-o")
	if i < 0 || i+1 >= len(w) {
		t.Fatalf("go build without -o: %q", w)
	}
	return goBuild{words: append(slices.Clone(w[:i]), w[i+2:]...), out: w[i+1]}
}

// TestManifestDockerBuildMatchesMakefile: the Dockerfile builds with exactly the
// Makefile's flags, and -X names the variable the code has.
func TestManifestDockerBuildMatchesMakefile(t *testing.T) {
	t.Parallel()
	d, m := dockerBuild(t), makeBuild(t)
	if !slices.Equal(d.words, m.words) {
		t.Errorf("Dockerfile and Makefile build differently:\n Dockerfile: %q\n Makefile:   %q", d.words, m.words)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath"} {
		if !slices.Contains(d.words, want) {
			t.Errorf("Dockerfile build lacks %s: %q", want, d.words)
		}
	}
	i := slices.Index(d.words, "-ldflags")
	if i < 0 || i+1 >= len(d.words) {
		t.Fatalf("Dockerfile build has no -ldflags: %q", d.words)
	}
	version := reflect.TypeFor[cli.Config]().PkgPath() + ".Version=VERSION"
	if !slices.Contains(strings.Fields(d.words[i+1]), version) {
		t.Errorf("-ldflags %q does not set %s", d.words[i+1], version)
	}
	_ = cli.Version // the variable -X writes
}

// TestManifestDockerfile checks the Dockerfile's stages against the code and
// the module.
func TestManifestDockerfile(t *testing.T) {
	t.Parallel()
	c := learn(t)
	ins := dockerfile(t)
	final := finalStage(ins)

	from := strings.Fields(ins[0].args)
	goMod := regexp.MustCompile(`(?m)^go (\d+\.\d+\.\d+)\s*$`).FindStringSubmatch(readFile(t, "../go.mod"))
	if goMod == nil || len(from) == 0 {
		t.Fatalf("build stage FROM %v, go.mod's go directive %v", from, goMod)
	}
	if repo, tag := imageRef(from[0]); repo != "docker.io/library/golang" || tag != goMod[1] && !strings.HasPrefix(tag, goMod[1]+"-") {
		t.Errorf("build stage FROM %s, want docker.io/library/golang:%s (go.mod's go directive)", from[0], goMod[1])
	}
	if base := strings.Fields(only(t, final, "FROM").args)[0]; !strings.HasPrefix(base, "gcr.io/distroless/static") || !strings.HasSuffix(base, ":nonroot") {
		t.Errorf("final stage FROM %s, want gcr.io/distroless/static-*:nonroot (a static binary, non-root)", base)
	}
	if uid := imageUID(t); uid == 0 {
		t.Error("USER is root")
	}
	if port := only(t, final, "EXPOSE").args; port != c.httpPort && port != c.httpPort+"/tcp" {
		t.Errorf("EXPOSE %s, want the health and metrics port %s", port, c.httpPort)
	}

	// ENTRYPOINT is the binary the build stage wrote.
	entry := execForm(t, only(t, final, "ENTRYPOINT"))
	copied := false
	for _, in := range final {
		if in.cmd == "COPY" && strings.HasPrefix(in.args, "--from=") {
			w := strings.Fields(in.args)
			copied = copied || len(w) == 3 && w[1] == dockerBuild(t).out && len(entry) == 1 && w[2] == entry[0]
		}
	}
	if !copied {
		t.Errorf("ENTRYPOINT %q is not the build stage's %s copied into the image", entry, dockerBuild(t).out)
	}
	c.checkCommandLine(t, "CMD", execForm(t, only(t, final, "CMD")))

	// The version reaches the final stage's labels (ARG is per stage).
	args := map[string]bool{}
	for _, in := range final {
		if in.cmd == "ARG" {
			name, _, _ := strings.Cut(in.args, "=")
			args[name] = true
		}
	}
	label := only(t, final, "LABEL").args
	if !strings.Contains(label, `org.opencontainers.image.version="${VERSION}"`) || !args["VERSION"] {
		t.Errorf("final stage: want ARG VERSION and LABEL org.opencontainers.image.version=\"${VERSION}\", got %q", label)
	}
	// A health check can only run the binary itself: there is no shell.
	for _, in := range final {
		if in.cmd != "HEALTHCHECK" || strings.EqualFold(in.args, "NONE") {
			continue
		}
		_, cmd, _ := strings.Cut(in.args, "CMD ")
		argv := execForm(t, instruction{cmd: "HEALTHCHECK CMD", args: strings.TrimSpace(cmd)})
		if len(argv) == 0 || len(entry) == 0 || argv[0] != entry[0] {
			t.Errorf("HEALTHCHECK %s: can only run %v, the image has no shell or HTTP client", in.args, entry)
			continue
		}
		c.checkCommandLine(t, "HEALTHCHECK", argv[1:])
	}
}

// TestManifestImageBuildsLikeTheDockerfile runs the Dockerfile's go build on the
// build context its ignore file leaves, as `docker build` would, then the
// image's entrypoint and command: no Docker engine needed.
func TestManifestImageBuildsLikeTheDockerfile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	t.Parallel()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	ctxDir := copyBuildContext(t)
	b := dockerBuild(t)
	const version = "v0.0.0-deploy-test"
	var env []string
	words := slices.Clone(b.words)
	for len(words) > 0 && strings.Contains(words[0], "=") {
		env = append(env, words[0])
		words = words[1:]
	}
	if len(words) < 2 || words[0] != "go" || words[1] != "build" {
		t.Fatalf("not a go build: %q", b.words)
	}
	bin := filepath.Join(t.TempDir(), path.Base(b.out))
	args := append([]string{"build", "-o", bin}, words[2:]...)
	for i := range args {
		args[i] = strings.ReplaceAll(args[i], "VERSION", version)
	}
	build := exec.CommandContext(t.Context(), gobin, args...) //nolint:gosec // the Dockerfile's own build command, on purpose
	build.Dir, build.Env = ctxDir, append(os.Environ(), env...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go %s (in the build context): %v\n%s", strings.Join(args, " "), err, out)
	}

	out, err := exec.CommandContext(t.Context(), bin, "version").Output() //nolint:gosec // the binary just built
	if err != nil || strings.TrimSpace(string(out)) != "queue-janitor "+version {
		t.Errorf("%s version: %q, %v; want the stamped %s", bin, out, err, version)
	}
	cmd := execForm(t, only(t, finalStage(dockerfile(t)), "CMD"))
	out, err = exec.CommandContext(t.Context(), bin, append(cmd, "--help")...).Output() //nolint:gosec // the binary just built
	if err != nil || !bytes.Contains(out, []byte("Usage: queue-janitor "+cmd[0])) {
		t.Errorf("the image's CMD %q --help: %v\n%s", cmd, err, out)
	}
	if runtime.GOOS == "linux" {
		checkStatic(t, bin)
	}
}

// checkStatic: no dynamic loader (CGO_ENABLED=0 works on distroless/static)
// and no symbol table (-s).
func checkStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary is dynamically linked: it will not run on distroless/static")
		}
	}
	if f.Section(".symtab") != nil {
		t.Error("the binary has a symbol table: -ldflags -s was not applied")
	}
}

// copyBuildContext copies the module root into a temporary directory,
// leaving out what Dockerfile.dockerignore excludes.
func copyBuildContext(t *testing.T) string {
	t.Helper()
	var patterns []string
	for _, line := range strings.Split(string(readBytes(t, "Dockerfile.dockerignore")), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") || strings.Contains(line, "**") {
			t.Fatalf("Dockerfile.dockerignore: %q: this test copies the context with simple patterns only", line)
		}
		patterns = append(patterns, path.Clean(strings.Trim(line, "/")))
	}
	ignored := func(rel string) bool {
		for p := rel; p != "."; p = path.Dir(p) {
			for _, pat := range patterns {
				if ok, _ := path.Match(pat, p); ok {
					return true
				}
			}
		}
		return false
	}
	root, err := os.OpenRoot("..")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = root.Close() }()
	dst := t.TempDir()
	for _, must := range []string{"go.mod", "go.sum", "cmd/queue-janitor"} {
		if ignored(must) {
			t.Errorf("Dockerfile.dockerignore excludes %s, which the build needs", must)
		}
	}
	err = fs.WalkDir(root.FS(), ".", func(rel string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case rel == ".":
			return nil
		case ignored(rel) && d.IsDir():
			return fs.SkipDir
		case ignored(rel):
			return nil
		case d.IsDir():
			return os.MkdirAll(filepath.Join(dst, filepath.FromSlash(rel)), 0o750)
		case !d.Type().IsRegular():
			return nil
		}
		data, err := fs.ReadFile(root.FS(), rel)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, filepath.FromSlash(rel)), data, 0o600)
	})
	if err != nil {
		t.Fatalf("copy the build context: %v", err)
	}
	return dst
}

// shellWords splits a command line as sh does for plain words, single and
// double quotes (no expansion).
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// imageRef splits an image reference into its repository and its tag, the
// digest dropped: docker.io/library/nats:2.10.27-alpine gives
// docker.io/library/nats and 2.10.27-alpine. A reference without a tag
// gives "".
func imageRef(ref string) (repo, tag string) {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i], ref[i+1:]
	}
	return ref, ""
}

// unqualified says why ref is not a fully qualified image reference pinned
// by tag, or "". Fully qualified: the first component names a registry (it
// has a dot or a port, or is localhost), as podman and buildah require
// unless short-name aliases are configured.
func unqualified(ref string) string {
	repo, tag := imageRef(ref)
	registry, _, ok := strings.Cut(repo, "/")
	switch {
	case !ok || !strings.ContainsAny(registry, ".:") && registry != "localhost":
		return "a short name: name the registry (docker.io/library/..., gcr.io/..., localhost/...); podman and buildah refuse short names"
	case tag == "":
		return "no tag: pin one"
	case tag == "latest":
		return "tag latest: pin a release"
	}
	return ""
}

func TestImageRefs(t *testing.T) {
	t.Parallel()
	for ref, want := range map[string]bool{
		"docker.io/library/golang:1.26.8":           true,
		"gcr.io/distroless/static-debian12:nonroot": true,
		"localhost/queue-janitor:dev":               true,
		"localhost:5000/queue-janitor:v1@sha256:ab": true,
		"golang:1.26":                   false,
		"nats:2.10-alpine":              false,
		"jaegertracing/jaeger:2.14.0":   false,
		"docker.io/library/nats":        false,
		"docker.io/library/nats:latest": false,
	} {
		if got := unqualified(ref) == ""; got != want {
			t.Errorf("unqualified(%q) = %q, want qualified %v", ref, unqualified(ref), want)
		}
	}
}

// TestManifestImagesAreFullyQualified: every image the Dockerfile builds
// from and every image compose runs is fully qualified and pinned by tag,
// and no syntax directive makes BuildKit fetch a frontend image.
func TestManifestImagesAreFullyQualified(t *testing.T) {
	t.Parallel()
	stages := map[string]bool{}
	for _, in := range dockerfile(t) {
		if in.cmd != "FROM" {
			continue
		}
		w := strings.Fields(in.args)
		if len(w) > 0 && !stages[w[0]] {
			if why := unqualified(w[0]); why != "" {
				t.Errorf("Dockerfile: FROM %s: %s", w[0], why)
			}
		}
		if len(w) >= 3 && strings.EqualFold(w[len(w)-2], "AS") {
			stages[w[len(w)-1]] = true
		}
	}
	for _, line := range strings.Split(string(readBytes(t, "Dockerfile")), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "#") {
			break // parser directives come before the first instruction
		}
		if m := regexp.MustCompile(`(?i)^#\s*syntax\s*=\s*(\S+)`).FindStringSubmatch(line); m != nil && !strings.Contains(m[1], "@sha256:") {
			t.Errorf("Dockerfile: %q makes every BuildKit build fetch %s from its registry (failing offline and behind mirrors); RUN --mount needs no syntax line", line, m[1])
		}
	}
	var f struct {
		Services map[string]struct {
			Image string `yaml:"image"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(readBytes(t, "compose.yaml"), &f); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for name, s := range f.Services {
		if why := unqualified(s.Image); why != "" {
			t.Errorf("compose.yaml: %s: image %q: %s", name, s.Image, why)
		}
	}
}

// TestManifestBuildKitRequirementIsDocumented: the Dockerfile uses RUN
// --mount, which the legacy builder refuses; the README and the
// Dockerfile say that BuildKit (or podman/buildah) is needed and how to get
// it, and that podman and buildah need --format docker to keep HEALTHCHECK.
func TestManifestBuildKitRequirementIsDocumented(t *testing.T) {
	t.Parallel()
	mounts := false
	for _, in := range dockerfile(t) {
		mounts = mounts || in.cmd == "RUN" && strings.Contains(in.args, "--mount=")
	}
	healthcheck := slices.ContainsFunc(dockerfile(t), func(in instruction) bool { return in.cmd == "HEALTHCHECK" })
	readme := readFile(t, "deploy/README.md")
	for name, text := range map[string]string{"deploy/README.md": readme, "deploy/Dockerfile": string(readBytes(t, "Dockerfile"))} {
		var want []string
		if mounts {
			want = append(want, "requires BuildKit", "DOCKER_BUILDKIT=1", "docker buildx build", "podman build", "buildah build")
		}
		if healthcheck {
			want = append(want, "--format docker")
		}
		for _, w := range want {
			if !strings.Contains(text, w) {
				t.Errorf("%s does not say %q (the Dockerfile uses RUN --mount: BuildKit or buildah is required)", name, w)
			}
		}
	}
	if mounts && strings.Contains(readme, "legacy builder ignores it") {
		t.Error("deploy/README.md still says the legacy builder builds the image")
	}
}
