// Package deploy_test checks the deployment artifacts in this directory
// (Dockerfile, compose.yaml, k8s/, nats/, prometheus/) against the code:
// what the service really reads, serves and needs. The directory holds no
// Go code of its own.
package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	yaml "go.yaml.in/yaml/v3"

	"github.com/example/queue-janitor/cmd/queue-janitor/cli"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/telemetry"
)

// shutdownMargin is what the service does after --shutdown-timeout before
// it exits on SIGTERM: the health listener's shutdown (5s) and the telemetry
// flush (10s), both bounded in cmd/queue-janitor/cli/serve.go.
const shutdownMargin = 15 * time.Second

// goRuntimeEnv are variables the Go runtime itself reads.
var goRuntimeEnv = []string{"GOMEMLIMIT", "GOMAXPROCS", "GOGC", "GODEBUG"}

// files is the deploy directory.
var files = os.DirFS(".")

// code holds what the service reads and serves, learned from the code.
type code struct {
	// flags[cmd] are the flags of a command (without dashes); a command
	// absent from it does not exist.
	flags map[string]map[string]bool
	// env are the variables `serve` reads: its flags' variables, the OTEL_*
	// names that the serve help and the configuration reference
	// (docs/OPERATIONS.md) document.
	env map[string]bool
	// envPrefixes are documented families, e.g. OTEL_EXPORTER_OTLP_.
	envPrefixes []string
	cfg         cli.Config
	httpPort    string
}

// learn runs `queue-janitor <cmd> --help` for every command and reads the
// configuration reference (docs/OPERATIONS.md) for the OpenTelemetry
// variables.
func learn(t *testing.T) code {
	t.Helper()
	c := code{flags: map[string]map[string]bool{}, env: map[string]bool{}, cfg: cli.DefaultConfig()}
	for _, cmd := range []string{"serve", "demo", "version", "healthcheck", "ls", "sweep", "clean", "flush", "emit"} {
		text := help(t, cmd)
		c.flags[cmd] = map[string]bool{}
		for _, m := range regexp.MustCompile(`(?m)^\s+--([a-z0-9-]+)\b`).FindAllStringSubmatch(text, -1) {
			c.flags[cmd][m[1]] = true
		}
		if cmd != "serve" {
			continue
		}
		for _, m := range regexp.MustCompile(`\[([A-Z][A-Z0-9_]*)\]`).FindAllStringSubmatch(text, -1) {
			c.env[m[1]] = true
		}
		otel := regexp.MustCompile(`\bOTEL_[A-Z0-9_]+`)
		readme := readFile(t, "../docs/OPERATIONS.md")
		for _, name := range append(otel.FindAllString(text, -1), otel.FindAllString(readme, -1)...) {
			if strings.HasSuffix(name, "_") { // "OTEL_EXPORTER_OTLP_*": a family
				c.envPrefixes = append(c.envPrefixes, name)
			} else {
				c.env[name] = true
			}
		}
	}
	if len(c.flags["serve"]) < 10 || !c.env["NATS_URL"] || !c.env["OTEL_EXPORTER_OTLP_ENDPOINT"] {
		t.Fatalf("could not read the flags and variables from the help text: %v %v", c.flags["serve"], c.env)
	}
	c.envPrefixes = append(c.envPrefixes, "OTEL_EXPORTER_OTLP_")
	for _, name := range goRuntimeEnv {
		c.env[name] = true
	}
	_, port, err := net.SplitHostPort(c.cfg.HTTPAddr)
	if err != nil {
		t.Fatalf("default --http-addr %q: %v", c.cfg.HTTPAddr, err)
	}
	c.httpPort = port
	return c
}

// help returns a command's help text; the command must exist.
func help(t *testing.T, cmd string) string {
	t.Helper()
	var out bytes.Buffer
	err := cli.Run(t.Context(), []string{cmd, "--help"}, func(string) string { return "" }, &out, io.Discard)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("queue-janitor %s --help: %v", cmd, err)
	}
	return out.String()
}

// reads reports whether the service reads the environment variable.
func (c code) reads(name string) bool {
	if c.env[name] {
		return true
	}
	for _, p := range c.envPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// checkCommandLine checks that argv (what follows the binary) names a
// command and only flags that command has.
func (c code) checkCommandLine(t *testing.T, where string, argv []string) {
	t.Helper()
	if len(argv) == 0 {
		t.Errorf("%s: no command (want serve)", where)
		return
	}
	flags, ok := c.flags[argv[0]]
	if !ok {
		t.Errorf("%s: %q is not a queue-janitor command", where, argv[0])
		return
	}
	for _, arg := range argv[1:] {
		if !strings.HasPrefix(arg, "-") {
			continue // a flag's value
		}
		name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if !flags[name] {
			t.Errorf("%s: %s has no flag --%s", where, argv[0], name)
		}
	}
}

// checkEnvValues runs `queue-janitor serve` with env as its environment and
// checks that the settings parse and validate: the run must get as far as
// connecting to NATS (pointed at a closed port here) and fail only there.
func (c code) checkEnvValues(t *testing.T, where string, argv []string, env map[string]string) {
	t.Helper()
	for name := range env {
		if !c.reads(name) {
			t.Errorf("%s: %s is not a variable queue-janitor reads", where, name)
		}
	}
	getenv := func(k string) string {
		switch k {
		case "NATS_URL":
			return "nats://127.0.0.1:1"
		case "NATS_CONNECT_TIMEOUT":
			return "1s"
		case "QUEUE_JANITOR_HTTP_ADDR":
			return "127.0.0.1:0"
		}
		return env[k]
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := cli.Run(ctx, argv, getenv, io.Discard, io.Discard)
	switch {
	case err == nil:
		t.Errorf("%s: serve ran without NATS", where)
	case errors.Is(err, cli.ErrUsage):
		t.Errorf("%s: the settings are refused: %v", where, err)
	case !strings.Contains(err.Error(), "NATS") && !strings.Contains(err.Error(), "creds"):
		t.Errorf("%s: serve failed before connecting to NATS: %v", where, err)
	}
}

// durationSetting is the value of a duration flag as the environment env and
// the command line argv set it, or its default.
func durationSetting(t *testing.T, flagName, envName string, def time.Duration, env map[string]string, argv []string) time.Duration {
	t.Helper()
	text := env[envName]
	for i, arg := range argv {
		if v, ok := strings.CutPrefix(arg, "--"+flagName+"="); ok {
			text = v
		} else if arg == "--"+flagName && i+1 < len(argv) {
			text = argv[i+1]
		}
	}
	if text == "" {
		return def
	}
	d, err := time.ParseDuration(text)
	if err != nil {
		t.Fatalf("--%s %q: %v", flagName, text, err)
	}
	return d
}

// TestManifestProbePathsAreServed: the paths the manifests probe and scrape
// are the ones the health handler serves.
func TestManifestProbePathsAreServed(t *testing.T) {
	t.Parallel()
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "# metrics\n") })
	h := telemetry.HealthHandler(map[string]telemetry.Check{}, metrics)
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, p, nil))
		if rec.Code != http.StatusOK {
			t.Errorf("GET %s: %d, want 200", p, rec.Code)
		}
	}
}

// servedPaths are the probe and scrape paths the manifests may use; the test
// above shows that the service serves each.
var servedPaths = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// --- Kubernetes ---

type k8sMeta struct {
	Name        string            `yaml:"name"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type k8sObject struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   k8sMeta           `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	file       string
	node       *yaml.Node
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type securityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	Privileged               *bool  `yaml:"privileged"`
	Capabilities             struct {
		Add  []string `yaml:"add"`
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
	SeccompProfile struct {
		Type string `yaml:"type"`
	} `yaml:"seccompProfile"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Ports   []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env []struct {
		Name      string     `yaml:"name"`
		Value     string     `yaml:"value"`
		ValueFrom *yaml.Node `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
		SecretRef *struct {
			Name string `yaml:"name"`
		} `yaml:"secretRef"`
	} `yaml:"envFrom"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	StartupProbe    *probe          `yaml:"startupProbe"`
	LivenessProbe   *probe          `yaml:"livenessProbe"`
	ReadinessProbe  *probe          `yaml:"readinessProbe"`
	SecurityContext securityContext `yaml:"securityContext"`
}

type volume struct {
	Name   string `yaml:"name"`
	Secret *struct {
		SecretName string `yaml:"secretName"`
	} `yaml:"secret"`
}

type affinityTerm struct {
	TopologyKey   string        `yaml:"topologyKey"`
	LabelSelector labelSelector `yaml:"labelSelector"`
}

type deployment struct {
	Spec struct {
		Replicas int           `yaml:"replicas"`
		Selector labelSelector `yaml:"selector"`
		Template struct {
			Metadata k8sMeta `yaml:"metadata"`
			Spec     struct {
				ServiceAccountName            string          `yaml:"serviceAccountName"`
				AutomountServiceAccountToken  *bool           `yaml:"automountServiceAccountToken"`
				TerminationGracePeriodSeconds *int            `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               securityContext `yaml:"securityContext"`
				Affinity                      struct {
					PodAntiAffinity struct {
						Required  []affinityTerm `yaml:"requiredDuringSchedulingIgnoredDuringExecution"`
						Preferred []struct {
							PodAffinityTerm affinityTerm `yaml:"podAffinityTerm"`
						} `yaml:"preferredDuringSchedulingIgnoredDuringExecution"`
					} `yaml:"podAntiAffinity"`
				} `yaml:"affinity"`
				Containers []container `yaml:"containers"`
				Volumes    []volume    `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sService struct {
	Spec struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type pdb struct {
	Spec struct {
		MinAvailable   any           `yaml:"minAvailable"`
		MaxUnavailable any           `yaml:"maxUnavailable"`
		Selector       labelSelector `yaml:"selector"`
	} `yaml:"spec"`
}

// find returns the only object of kind, decoded into v.
func find(t *testing.T, objs []k8sObject, kind string, v any) k8sObject {
	t.Helper()
	var found []k8sObject
	for _, o := range objs {
		if o.Kind == kind {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s, found %d", kind, len(found))
	}
	if v != nil {
		if err := found[0].node.Decode(v); err != nil {
			t.Fatalf("%s %s: %v", kind, found[0].Metadata.Name, err)
		}
	}
	return found[0]
}

func findNamed(objs []k8sObject, kind, name string) (k8sObject, bool) {
	for _, o := range objs {
		if o.Kind == kind && o.Metadata.Name == name {
			return o, true
		}
	}
	return k8sObject{}, false
}

// selects reports whether a selector's labels all appear in labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestManifestKubernetes checks the Kubernetes manifests, as each entry
// point renders them, against the code.
func TestManifestKubernetes(t *testing.T) {
	t.Parallel()
	c := learn(t)
	for _, dir := range sortedKeys(k8sEntryPoints) {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			checkKubernetes(t, c, k8sObjects(t, dir))
		})
	}
}

// checkKubernetes checks one entry point's objects.
func checkKubernetes(t *testing.T, c code, objs []k8sObject) {
	t.Helper()
	var dep deployment
	depObj := find(t, objs, "Deployment", &dep)
	spec := dep.Spec.Template.Spec
	podLabels := dep.Spec.Template.Metadata.Labels

	if dep.Spec.Replicas != 2 {
		t.Errorf("Deployment replicas = %d, want 2", dep.Spec.Replicas)
	}
	if !selects(dep.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("Deployment selector %v does not select its pods %v", dep.Spec.Selector.MatchLabels, podLabels)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(spec.Containers))
	}
	ctr := spec.Containers[0]

	// Command line: the image's entrypoint with these args.
	if len(ctr.Command) > 0 {
		t.Errorf("container command %v overrides the image's entrypoint; set args only", ctr.Command)
	}
	c.checkCommandLine(t, "Deployment args", ctr.Args)

	// Environment: every variable is read by the service, the values
	// validate, and no secret sits in plain sight.
	env := map[string]string{}
	for _, from := range ctr.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, ok := findNamed(objs, "ConfigMap", from.ConfigMapRef.Name)
			if !ok {
				t.Fatalf("envFrom ConfigMap %q is not among the manifests", from.ConfigMapRef.Name)
			}
			for k, v := range cm.Data {
				env[k] = v
			}
		case from.SecretRef != nil:
			t.Errorf("envFrom secretRef %q: pass NATS credentials as a mounted file (NATS_CREDS), not variables", from.SecretRef.Name)
		}
	}
	for _, e := range ctr.Env {
		if e.ValueFrom != nil {
			if !c.reads(e.Name) {
				t.Errorf("Deployment: %s is not a variable queue-janitor reads", e.Name)
			}
			if e.Name == "GOMEMLIMIT" {
				t.Error("GOMEMLIMIT comes from a resourceFieldRef: that is 100% of the memory limit (a divisor cannot take a fraction); set a value below it")
			}
			continue // resolved by Kubernetes
		}
		env[e.Name] = e.Value
	}
	for _, secret := range []string{"NATS_PASSWORD", "NATS_TOKEN"} {
		if _, ok := env[secret]; ok {
			t.Errorf("%s is set in plain text in the ConfigMap or Deployment", secret)
		}
	}
	c.checkEnvValues(t, "Deployment and ConfigMap", ctr.Args, env)
	checkInboxPrefix(t, "Deployment and ConfigMap", env)

	// NATS credentials: a file from a Secret.
	creds := env["NATS_CREDS"]
	if creds == "" {
		t.Error("NATS_CREDS is not set: the service would connect without credentials")
	} else {
		checkCredsMount(t, objs, spec.Volumes, ctr, creds)
	}

	// Ports and probes.
	httpPort := c.httpPort
	if addr := env["QUEUE_JANITOR_HTTP_ADDR"]; addr != "" {
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("QUEUE_JANITOR_HTTP_ADDR %q: %v", addr, err)
		}
		httpPort = p
	}
	portByName := map[string]string{}
	for _, p := range ctr.Ports {
		portByName[p.Name] = strconv.Itoa(p.ContainerPort)
	}
	if portByName["http"] != httpPort {
		t.Errorf("container port \"http\" = %q, want %s (--http-addr)", portByName["http"], httpPort)
	}
	resolve := func(port any) string {
		s := fmt.Sprint(port)
		if named, ok := portByName[s]; ok {
			return named
		}
		return s
	}
	for _, p := range []struct {
		name  string
		probe *probe
		path  string
	}{
		{"livenessProbe", ctr.LivenessProbe, "/healthz"},
		{"readinessProbe", ctr.ReadinessProbe, "/readyz"},
		{"startupProbe", ctr.StartupProbe, ""},
	} {
		switch {
		case p.probe == nil && p.path == "":
		case p.probe == nil || p.probe.HTTPGet == nil:
			t.Errorf("%s: want an httpGet probe on %s", p.name, p.path)
		case p.path != "" && p.probe.HTTPGet.Path != p.path, !servedPaths[p.probe.HTTPGet.Path]:
			t.Errorf("%s path %q, want %s", p.name, p.probe.HTTPGet.Path, p.path)
		case resolve(p.probe.HTTPGet.Port) != httpPort:
			t.Errorf("%s port %v is not the health port %s", p.name, p.probe.HTTPGet.Port, httpPort)
		}
	}
	ann := dep.Spec.Template.Metadata.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != httpPort || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod prometheus.io annotations %v do not point at %s/metrics", ann, httpPort)
	}
	// One scrape per replica: annotating the Service too makes the common
	// Prometheus configurations (the Helm chart's kubernetes-pods and
	// kubernetes-service-endpoints jobs) collect every pod twice, doubling
	// each sum() on the dashboard.
	for _, o := range objs {
		for key := range o.Metadata.Annotations {
			if strings.HasPrefix(key, "prometheus.io/") && o.Kind != "Deployment" {
				t.Errorf("%s %s has the annotation %s: the pods are scraped already, this would scrape them twice", o.Kind, o.Metadata.Name, key)
			}
		}
	}

	// Resources.
	for _, r := range []string{"cpu", "memory"} {
		if ctr.Resources.Requests[r] == "" || ctr.Resources.Limits[r] == "" {
			t.Errorf("resources: want requests and limits for %s, got %+v", r, ctr.Resources)
		}
	}
	checkGOMEMLIMIT(t, env["GOMEMLIMIT"], ctr.Resources.Limits["memory"])

	// Security.
	checkSecurityContext(t, spec.SecurityContext, ctr.SecurityContext)
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken should be false: the service never calls the Kubernetes API")
	}
	if spec.ServiceAccountName != "" {
		if _, ok := findNamed(objs, "ServiceAccount", spec.ServiceAccountName); !ok {
			t.Errorf("ServiceAccount %q is not among the manifests", spec.ServiceAccountName)
		}
	}

	// Graceful shutdown.
	shutdown := durationSetting(t, "shutdown-timeout", "QUEUE_JANITOR_SHUTDOWN_TIMEOUT", c.cfg.Intake.ShutdownTimeout, env, ctr.Args)
	switch g := spec.TerminationGracePeriodSeconds; {
	case g == nil:
		t.Errorf("terminationGracePeriodSeconds is not set; the default 30s does not exceed --shutdown-timeout %s + %s", shutdown, shutdownMargin)
	case time.Duration(*g)*time.Second <= shutdown+shutdownMargin:
		t.Errorf("terminationGracePeriodSeconds %d must exceed --shutdown-timeout %s + %s", *g, shutdown, shutdownMargin)
	}

	// Spreading over nodes.
	anti := spec.Affinity.PodAntiAffinity
	terms := anti.Required
	for _, p := range anti.Preferred {
		terms = append(terms, p.PodAffinityTerm)
	}
	spread := false
	for _, term := range terms {
		spread = spread || term.TopologyKey == "kubernetes.io/hostname" && selects(term.LabelSelector.MatchLabels, podLabels)
	}
	if !spread {
		t.Error("no pod anti-affinity on kubernetes.io/hostname selecting the service's own pods")
	}

	// PodDisruptionBudget and Service select these pods.
	var budget pdb
	find(t, objs, "PodDisruptionBudget", &budget)
	if fmt.Sprint(budget.Spec.MinAvailable) != "1" || !selects(budget.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("PodDisruptionBudget: minAvailable %v selector %v, want 1 and the pods %v",
			budget.Spec.MinAvailable, budget.Spec.Selector.MatchLabels, podLabels)
	}
	var svc k8sService
	find(t, objs, "Service", &svc)
	if !selects(svc.Spec.Selector, podLabels) {
		t.Errorf("Service selector %v does not select the pods %v", svc.Spec.Selector, podLabels)
	}
	exposed := false
	for _, p := range svc.Spec.Ports {
		exposed = exposed || resolve(p.TargetPort) == httpPort
	}
	if !exposed {
		t.Errorf("Service does not expose the metrics port %s", httpPort)
	}

	checkKustomization(t, objs, depObj)
}

// checkGOMEMLIMIT: the Go runtime's soft limit leaves headroom under the
// container's memory limit, 10 to 25% of it, for what the runtime does not
// count exactly, so that the runtime collects harder before the kernel's OOM
// killer acts.
func checkGOMEMLIMIT(t *testing.T, goMemLimit, limit string) {
	t.Helper()
	if goMemLimit == "" {
		t.Error("GOMEMLIMIT is not set: the Go runtime would not know the memory limit")
		return
	}
	soft, err := goMemBytes(goMemLimit)
	if err != nil {
		t.Errorf("GOMEMLIMIT %q: %v", goMemLimit, err)
		return
	}
	hard, err := quantityBytes(limit)
	if err != nil {
		t.Errorf("limits.memory %q: %v", limit, err)
		return
	}
	if ratio := float64(soft) / float64(hard); ratio < 0.75 || ratio > 0.9 {
		t.Errorf("GOMEMLIMIT %s is %.0f%% of limits.memory %s: want 75-90%%, leaving headroom under the limit", goMemLimit, 100*ratio, limit)
	}
}

// goMemBytes parses a GOMEMLIMIT value as the Go runtime does: a number
// with an optional unit B, KiB, MiB, GiB or TiB.
func goMemBytes(s string) (int64, error) {
	m := regexp.MustCompile(`^(\d+)(B|KiB|MiB|GiB|TiB)?$`).FindStringSubmatch(s)
	if m == nil {
		return 0, errors.New("want a number of bytes with an optional unit B, KiB, MiB, GiB or TiB (the Go runtime refuses Mi, M or MB)")
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	shift := map[string]uint{"": 0, "B": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}[m[2]]
	return n << shift, err
}

// quantityBytes parses a Kubernetes memory quantity with a binary or
// decimal suffix (256Mi, 1Gi, 500M) or none.
func quantityBytes(s string) (int64, error) {
	m := regexp.MustCompile(`^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$`).FindStringSubmatch(s)
	if m == nil {
		return 0, errors.New("not a quantity this test reads (a whole number with Ki, Mi, Gi, Ti, k, M, G or T)")
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	mult := map[string]int64{"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[m[2]]
	return n * mult, err
}

// checkCredsMount: the NATS_CREDS file is in a read-only mount of a Secret
// whose example has that key.
func checkCredsMount(t *testing.T, objs []k8sObject, volumes []volume, ctr container, creds string) {
	t.Helper()
	dir, key := path.Split(creds)
	for _, m := range ctr.VolumeMounts {
		if path.Clean(m.MountPath) != path.Clean(dir) {
			continue
		}
		if !m.ReadOnly {
			t.Errorf("volume mount %s should be readOnly", m.MountPath)
		}
		for _, v := range volumes {
			if v.Name != m.Name {
				continue
			}
			if v.Secret == nil {
				t.Fatalf("NATS_CREDS %s is not mounted from a Secret", creds)
			}
			example, ok := findNamed(objs, "Secret", v.Secret.SecretName)
			if !ok {
				t.Fatalf("Secret %q has no example in k8s/", v.Secret.SecretName)
			}
			_, inData := example.Data[key]
			_, inString := example.StringData[key]
			if !inData && !inString {
				t.Errorf("Secret %q has no key %q (NATS_CREDS %s)", v.Secret.SecretName, key, creds)
			}
			return
		}
	}
	t.Errorf("NATS_CREDS %s is not in any volume mount", creds)
}

// checkSecurityContext checks the container's effective security settings
// (a container field wins over the pod's).
func checkSecurityContext(t *testing.T, pod, ctr securityContext) {
	t.Helper()
	isTrue := func(p ...*bool) bool {
		for _, b := range p {
			if b != nil {
				return *b
			}
		}
		return false
	}
	isFalse := func(b *bool) bool { return b != nil && !*b }
	user := ctr.RunAsUser
	if user == nil {
		user = pod.RunAsUser
	}
	seccomp := ctr.SeccompProfile.Type
	if seccomp == "" {
		seccomp = pod.SeccompProfile.Type
	}
	if !isTrue(ctr.RunAsNonRoot, pod.RunAsNonRoot) {
		t.Error("securityContext: runAsNonRoot must be true")
	}
	if user == nil || *user != imageUID(t) {
		t.Errorf("securityContext: runAsUser %v, want the image's user %d", user, imageUID(t))
	}
	if !isTrue(ctr.ReadOnlyRootFilesystem) {
		t.Error("securityContext: readOnlyRootFilesystem must be true")
	}
	if !isFalse(ctr.AllowPrivilegeEscalation) {
		t.Error("securityContext: allowPrivilegeEscalation must be false")
	}
	if isTrue(ctr.Privileged) {
		t.Error("securityContext: privileged")
	}
	if !slices.Contains(ctr.Capabilities.Drop, "ALL") || len(ctr.Capabilities.Add) > 0 {
		t.Errorf("securityContext: capabilities %+v, want drop ALL and add none", ctr.Capabilities)
	}
	if seccomp != "RuntimeDefault" {
		t.Errorf("securityContext: seccompProfile %q, want RuntimeDefault", seccomp)
	}
}

// checkKustomization: the base lists every manifest in k8s/base, nothing
// renders a Secret (the example is not applied), and the base's image
// override names the Deployment's image.
func checkKustomization(t *testing.T, objs []k8sObject, dep k8sObject) {
	t.Helper()
	k := readKustomization(t, "k8s/base")
	names, err := fs.Glob(files, "k8s/base/*.yaml")
	if err != nil || len(names) == 0 {
		t.Fatalf("no manifests in k8s/base: %v", err)
	}
	for _, name := range names {
		if path.Base(name) != "kustomization.yaml" && !slices.Contains(k.Resources, path.Base(name)) {
			t.Errorf("k8s/base/kustomization.yaml does not list %s", name)
		}
	}
	for _, o := range objs {
		if o.Kind == "Secret" && o.file != secretExample {
			t.Errorf("%s applies a Secret: create it from the real .creds file instead", o.file)
		}
	}
	var image struct {
		Spec struct {
			Template struct {
				Spec struct {
					Containers []container `yaml:"containers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(readBytes(t, "k8s/base/deployment.yaml"), &image); err != nil || len(image.Spec.Template.Spec.Containers) == 0 {
		t.Fatalf("k8s/base/deployment.yaml: %v", err)
	}
	name, _ := imageRef(image.Spec.Template.Spec.Containers[0].Image)
	for _, img := range k.Images {
		if img.Name == name {
			return
		}
	}
	if len(k.Images) > 0 {
		t.Errorf("k8s/base/kustomization.yaml images %v do not name the Deployment's image %s (%s)", k.Images, name, dep.Metadata.Name)
	}
}

// --- compose, Prometheus, NATS ---

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Command     any `yaml:"command"`
	Environment any `yaml:"environment"`
	Deploy      struct {
		Replicas *int `yaml:"replicas"`
	} `yaml:"deploy"`
	DependsOn   any `yaml:"depends_on"`
	Healthcheck *struct {
		Test    any  `yaml:"test"`
		Disable bool `yaml:"disable"`
	} `yaml:"healthcheck"`
	Volumes         []string `yaml:"volumes"`
	User            string   `yaml:"user"`
	ReadOnly        bool     `yaml:"read_only"`
	CapDrop         []string `yaml:"cap_drop"`
	SecurityOpt     []string `yaml:"security_opt"`
	StopGracePeriod string   `yaml:"stop_grace_period"`
}

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

// words is a compose command in either form.
func words(t *testing.T, v any) []string {
	t.Helper()
	switch v := v.(type) {
	case nil:
		return nil
	case string:
		return shellWords(t, v)
	case []any:
		out := make([]string, len(v))
		for i, w := range v {
			out[i] = fmt.Sprint(w)
		}
		return out
	}
	t.Fatalf("command %v: neither a string nor a list", v)
	return nil
}

// environment is a compose environment in either form.
func environment(t *testing.T, v any) map[string]string {
	t.Helper()
	env := map[string]string{}
	switch v := v.(type) {
	case nil:
	case map[string]any:
		for k, val := range v {
			env[k] = fmt.Sprint(val)
		}
	case []any:
		for _, kv := range v {
			k, val, _ := strings.Cut(fmt.Sprint(kv), "=")
			env[k] = val
		}
	default:
		t.Fatalf("environment %v: neither a map nor a list", v)
	}
	return env
}

// dependsOn is a compose depends_on as service → condition.
func dependsOn(v any) map[string]string {
	out := map[string]string{}
	switch v := v.(type) {
	case []any:
		for _, s := range v {
			out[fmt.Sprint(s)] = "service_started"
		}
	case map[string]any:
		for s, spec := range v {
			cond := "service_started"
			if m, ok := spec.(map[string]any); ok && m["condition"] != nil {
				cond = fmt.Sprint(m["condition"])
			}
			out[s] = cond
		}
	}
	return out
}

// mountSource returns the host path of a bind mount of target, relative to
// the deploy directory, or "".
func mountSource(volumes []string, target string) string {
	for _, v := range volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == target && strings.HasPrefix(parts[0], ".") {
			return path.Clean(parts[0])
		}
	}
	return ""
}

// TestManifestCompose checks compose.yaml, the NATS configuration it mounts
// and the Prometheus configuration against the code.
func TestManifestCompose(t *testing.T) {
	t.Parallel()
	c := learn(t)
	var f composeFile
	if err := yaml.Unmarshal(readBytes(t, "compose.yaml"), &f); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	var janitors []string
	replicas := 0
	for name, s := range f.Services {
		if s.Build != nil && path.Clean(s.Build.Dockerfile) == "deploy/Dockerfile" {
			janitors = append(janitors, name)
			if s.Deploy.Replicas != nil {
				replicas += *s.Deploy.Replicas
			} else {
				replicas++
			}
		}
	}
	if len(janitors) == 0 {
		t.Fatal("compose.yaml: no service is built from deploy/Dockerfile")
	}
	if replicas != 2 {
		t.Errorf("compose.yaml: %d queue-janitor replicas, want 2", replicas)
	}
	natsConf, natsService := checkComposeNATS(t, f)
	for _, name := range janitors {
		s := f.Services[name]
		if s.Build.Context != ".." {
			t.Errorf("%s: build context %q, want the repository root (..)", name, s.Build.Context)
		}
		argv := words(t, s.Command)
		if len(argv) == 0 {
			argv = []string{"serve"} // the image's CMD
		}
		c.checkCommandLine(t, name+" command", argv)
		env := environment(t, s.Environment)
		c.checkEnvValues(t, name+" environment", argv, env)

		// It connects to the compose NATS, as the least-privilege user.
		if host, port := urlHostPort(t, env["NATS_URL"]); host != natsService || port != strconv.Itoa(natsConf.Port) {
			t.Errorf("%s: NATS_URL %q is not the nats service's port %d", name, env["NATS_URL"], natsConf.Port)
		}
		user := confUser(natsConf, env["NATS_USER"])
		switch {
		case user == nil || user.Password != env["NATS_PASSWORD"]:
			t.Errorf("%s: NATS_USER/NATS_PASSWORD are not a user of nats/nats-server.conf", name)
		case user.Permissions == nil || user.Permissions.Publish == nil || slices.Contains(user.Permissions.Publish.Allow, ">"):
			t.Errorf("%s: runs as %q, which is not the least-privilege user", name, user.Username)
		}
		checkInboxPrefix(t, name, env)
		if dependsOn(s.DependsOn)[natsService] != "service_healthy" {
			t.Errorf("%s: should wait for %s to be healthy", name, natsService)
		}
		if endpoint := env["OTEL_EXPORTER_OTLP_ENDPOINT"]; endpoint != "" {
			if host, _ := urlHostPort(t, endpoint); f.Services[host].Image == "" {
				t.Errorf("%s: OTEL_EXPORTER_OTLP_ENDPOINT %q is not a compose service", name, endpoint)
			}
		}

		// The restrictions of the Kubernetes securityContext.
		if uid, _, _ := strings.Cut(s.User, ":"); uid != strconv.FormatInt(imageUID(t), 10) {
			t.Errorf("%s: user %q, want the image's %d", name, s.User, imageUID(t))
		}
		if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") || !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("%s: want read_only, cap_drop ALL and no-new-privileges", name)
		}
		shutdown := durationSetting(t, "shutdown-timeout", "QUEUE_JANITOR_SHUTDOWN_TIMEOUT", c.cfg.Intake.ShutdownTimeout, env, argv)
		grace, err := time.ParseDuration(s.StopGracePeriod)
		if err != nil || grace <= shutdown+shutdownMargin {
			t.Errorf("%s: stop_grace_period %q must exceed --shutdown-timeout %s + %s", name, s.StopGracePeriod, shutdown, shutdownMargin)
		}
		checkPrometheus(t, f, name, c.httpPort, env)
	}
}

// checkComposeNATS: a NATS 2.10+ service with JetStream, a health check and
// the mounted configuration, which loads. It returns the configuration and
// the service's name.
func checkComposeNATS(t *testing.T, f composeFile) (*server.Options, string) {
	t.Helper()
	for name, s := range f.Services {
		repo, tag := imageRef(s.Image)
		if repo != "nats" && !strings.HasSuffix(repo, "/nats") {
			continue
		}
		// NATS 2.10 is what Antenna deploys; pin a release of it (CI tests
		// the service on 2.10.27 as well as on the embedded 2.15 server).
		if !regexp.MustCompile(`^2\.10\.\d+(-|$)`).MatchString(tag) {
			t.Errorf("%s: image %s, want a pinned NATS 2.10 release (docker.io/library/nats:2.10.N-alpine), the line Antenna deploys", name, s.Image)
		}
		argv := words(t, s.Command)
		if !slices.Contains(argv, "-js") && !slices.Contains(argv, "--jetstream") {
			t.Errorf("%s: command %v does not enable JetStream (-js)", name, argv)
		}
		if s.Healthcheck == nil || s.Healthcheck.Disable || s.Healthcheck.Test == nil {
			t.Errorf("%s: no health check", name)
		}
		var conf string
		for i, a := range argv {
			if (a == "-c" || a == "--config") && i+1 < len(argv) {
				conf = mountSource(s.Volumes, argv[i+1])
			}
		}
		if conf == "" {
			t.Fatalf("%s: the --config file is not a bind mount from deploy/", name)
		}
		opts, err := server.ProcessConfigFile(conf)
		if err != nil {
			t.Fatalf("%s: %s: %v", name, conf, err)
		}
		if !opts.JetStream {
			t.Errorf("%s: JetStream is off in %s", name, conf)
		}
		return opts, name
	}
	t.Fatal("compose.yaml: no NATS service")
	return nil, ""
}

// checkPrometheus: a Prometheus service with a health check scrapes the
// janitor service's /metrics on the health port.
func checkPrometheus(t *testing.T, f composeFile, janitor, defaultPort string, env map[string]string) {
	t.Helper()
	port := defaultPort
	if addr := env["QUEUE_JANITOR_HTTP_ADDR"]; addr != "" {
		_, port, _ = net.SplitHostPort(addr)
	}
	for name, s := range f.Services {
		if !strings.Contains(s.Image, "prometheus") {
			continue
		}
		if s.Healthcheck == nil || s.Healthcheck.Test == nil {
			t.Errorf("%s: no health check", name)
		}
		conf := mountSource(s.Volumes, "/etc/prometheus/prometheus.yml")
		if conf == "" {
			t.Fatalf("%s: prometheus.yml is not a bind mount from deploy/", name)
		}
		var p struct {
			ScrapeConfigs []struct {
				MetricsPath  string `yaml:"metrics_path"`
				DNSSDConfigs []struct {
					Names []string `yaml:"names"`
					Port  int      `yaml:"port"`
				} `yaml:"dns_sd_configs"`
				StaticConfigs []struct {
					Targets []string `yaml:"targets"`
				} `yaml:"static_configs"`
			} `yaml:"scrape_configs"`
		}
		if err := yaml.Unmarshal(readBytes(t, conf), &p); err != nil {
			t.Fatalf("%s: %v", conf, err)
		}
		for _, sc := range p.ScrapeConfigs {
			mp := sc.MetricsPath
			if mp == "" {
				mp = "/metrics"
			}
			targets := map[string]bool{}
			for _, d := range sc.DNSSDConfigs {
				for _, n := range d.Names {
					targets[net.JoinHostPort(n, strconv.Itoa(d.Port))] = true
				}
			}
			for _, s := range sc.StaticConfigs {
				for _, tg := range s.Targets {
					targets[tg] = true
				}
			}
			if targets[net.JoinHostPort(janitor, port)] && servedPaths[mp] && mp == "/metrics" {
				return
			}
		}
		t.Errorf("%s does not scrape %s:%s/metrics", conf, janitor, port)
		return
	}
	t.Error("compose.yaml: no Prometheus service")
}

// TestManifestNATSPermissions checks deploy/nats/nats-server.conf against
// the code's default names: the janitor user may do what the service does
// with them (the integration tests show it is enough) and is denied deleting
// the shared streams and publishing tasks or status events.
func TestManifestNATSPermissions(t *testing.T) {
	t.Parallel()
	opts, err := server.ProcessConfigFile("nats/nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	janitor := confUser(opts, "janitor")
	if janitor == nil || janitor.Permissions == nil || janitor.Permissions.Publish == nil || janitor.Permissions.Subscribe == nil {
		t.Fatal("nats-server.conf: no janitor user with publish and subscribe permissions")
	}
	cfg := cli.DefaultConfig()
	stream, consumer := cfg.Intake.Stream, cfg.Intake.Consumer
	kv := "KV_" + cfg.Records.Bucket
	id := func(pattern string) string { return strings.ReplaceAll(pattern, "{id}", "1") }
	pub := janitor.Permissions.Publish
	for _, subject := range []string{
		"$JS.API.INFO",
		"$JS.API.STREAM.INFO." + stream,
		"$JS.API.STREAM.CREATE." + stream,
		"$JS.API.CONSUMER.CREATE." + stream + "." + consumer,
		"$JS.API.CONSUMER.MSG.NEXT." + stream + "." + consumer,
		"$JS.ACK." + stream + "." + consumer + ".1.1.1.1.0",
		"$JS.API.STREAM.CREATE." + kv,
		"$JS.API.STREAM.INFO." + kv,
		"$JS.API.DIRECT.GET." + kv + ".$KV." + cfg.Records.Bucket + ".job.1",
		"$KV." + cfg.Records.Bucket + ".job.1",
		"$JS.API.STREAM.LIST",
		"$JS.API.CONSUMER.LIST." + cfg.Names.AdvisoryStream,
		"$JS.API.STREAM.INFO." + id(cfg.Names.Stream),
		"$JS.API.CONSUMER.INFO." + id(cfg.Names.Stream) + "." + id(cfg.Names.Consumer),
		"$JS.API.STREAM.DELETE." + id(cfg.Names.Stream),
		"$JS.API.STREAM.PURGE." + id(cfg.Names.Stream),
		"$JS.API.CONSUMER.INFO." + cfg.Names.AdvisoryStream + "." + id(cfg.Names.DeadLetterConsumer),
		"$JS.API.CONSUMER.DELETE." + cfg.Names.AdvisoryStream + "." + id(cfg.Names.DeadLetterConsumer),
		id(cfg.Events.CleanedSubject),
		id(cfg.Events.FlushedSubject),
		cfg.Events.DeadLetterSubject,
		// The record rebuild's read-only replay of the event stream (an
		// ephemeral consumer), and dropping an old version's bucket TTL.
		"$JS.API.CONSUMER.CREATE." + stream + ".k3Xb9fQe",
		"$JS.API.CONSUMER.CREATE." + stream + ".k3Xb9fQe." + cfg.Intake.SubjectPrefix() + ">",
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".k3Xb9fQe",
		"$JS.API.STREAM.UPDATE." + kv,
	} {
		if !permits(pub, subject) {
			t.Errorf("janitor may not publish %s, which the service needs", subject)
		}
	}
	for _, subject := range []string{
		"$JS.API.STREAM.DELETE." + cfg.Names.AdvisoryStream,
		"$JS.API.STREAM.DELETE." + stream,
		"$JS.API.STREAM.DELETE." + kv,
		"$JS.API.CONSUMER.DELETE." + stream + "." + consumer,
		"$JS.API.STREAM.PURGE." + cfg.Names.AdvisoryStream,
		"$JS.API.STREAM.PURGE." + stream,
		"$JS.API.STREAM.PURGE." + kv,
		"$JS.API.STREAM.CREATE." + id(cfg.Names.Stream),
		id(cfg.Names.Subject),
		cfg.Intake.SubjectPrefix() + "revoked",
	} {
		if permits(pub, subject) {
			t.Errorf("janitor may publish %s", subject)
		}
	}
	sub := janitor.Permissions.Subscribe
	if !permits(sub, "_INBOX_janitor.abc.1") || permits(sub, "_INBOX.abc.1") || permits(sub, id(cfg.Names.Subject)) {
		t.Errorf("janitor subscribe permissions %+v: want its own inbox _INBOX_janitor.> only", sub)
	}
	for _, subject := range []string{"$JS.API.STREAM.UPDATE." + stream, "$JS.API.STREAM.UPDATE." + id(cfg.Names.Stream), "$JS.API.STREAM.UPDATE.BILLING"} {
		if permits(pub, subject) {
			t.Errorf("janitor may publish %s", subject)
		}
	}

	// The backend may write the per-job records and leases (its fallback
	// flush takes a job's lease like a replica), not the service's other
	// keys, and may not announce what only the service announces.
	backend := confUser(opts, "backend")
	if backend == nil || backend.Permissions == nil || backend.Permissions.Publish == nil {
		t.Fatal("nats-server.conf: no backend user with publish permissions")
	}
	bpub := backend.Permissions.Publish
	if !permits(bpub, "$KV."+cfg.Records.Bucket+".job.1") || !permits(bpub, id(cfg.Names.Subject)) || !permits(bpub, cfg.Intake.SubjectPrefix()+"revoked") {
		t.Error("backend may not write a job's record, publish a task or a status event")
	}
	for _, subject := range []string{
		"$KV." + cfg.Records.Bucket + "." + handlers.SweeperLeaseKey,
		"$KV." + cfg.Records.Bucket + ".rebuild",
		id(cfg.Events.CleanedSubject),
		id(cfg.Events.FlushedSubject),
		cfg.Events.DeadLetterSubject,
	} {
		if permits(bpub, subject) {
			t.Errorf("backend may publish %s, which only the service may", subject)
		}
	}

	// The account boundary: janitor and backend share one account, which
	// holds only them; the backend's other streams live in another
	// account, without a janitor.
	if janitor.Account == nil || backend.Account == nil || janitor.Account.Name != backend.Account.Name {
		t.Fatalf("janitor and backend must share the job queues' account")
	}
	jobs := janitor.Account.Name
	others := 0
	for _, u := range opts.Users {
		switch {
		case u.Account != nil && u.Account.Name == jobs && u.Username != "janitor" && u.Username != "backend":
			t.Errorf("user %s is in the job queues' account %s: give it its own account, out of the janitor's reach", u.Username, jobs)
		case u.Account != nil && u.Account.Name != jobs:
			others++
		}
	}
	if others == 0 {
		t.Errorf("no account besides %s: the example shows where the backend's other streams go", jobs)
	}
}

// checkInboxPrefix: the service's inbox prefix is set, and the janitor
// user of nats/nats-server.conf may subscribe to its replies there (and,
// as TestManifestNATSPermissions checks, nowhere else).
func checkInboxPrefix(t *testing.T, where string, env map[string]string) {
	t.Helper()
	opts, err := server.ProcessConfigFile("nats/nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	janitor := confUser(opts, "janitor")
	prefix := env["NATS_INBOX_PREFIX"]
	switch {
	case prefix == "":
		t.Errorf("%s: NATS_INBOX_PREFIX is not set: replies would go to _INBOX, which the janitor user may not read", where)
	case janitor == nil || janitor.Permissions == nil || !permits(janitor.Permissions.Subscribe, prefix+".abc.1"):
		t.Errorf("%s: NATS_INBOX_PREFIX %q is not the inbox nats/nats-server.conf lets janitor read", where, prefix)
	}
}

// permits applies NATS subject permissions: allowed by some allow (or no
// allow list) and by no deny.
func permits(p *server.SubjectPermission, subject string) bool {
	allowed := len(p.Allow) == 0
	for _, a := range p.Allow {
		allowed = allowed || subjectMatches(a, subject)
	}
	for _, d := range p.Deny {
		if subjectMatches(d, subject) {
			return false
		}
	}
	return allowed
}

// subjectMatches matches a subject against a pattern with * and >.
func subjectMatches(pattern, subject string) bool {
	pt, st := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, p := range pt {
		switch {
		case p == ">":
			return len(st) > i
		case i >= len(st):
			return false
		case p != "*" && p != st[i]:
			return false
		}
	}
	return len(pt) == len(st)
}

func confUser(opts *server.Options, name string) *server.User {
	for _, u := range opts.Users {
		if u.Username == name {
			return u
		}
	}
	return nil
}

// --- small helpers ---

func readBytes(t *testing.T, name string) []byte {
	t.Helper()
	b, err := fs.ReadFile(files, name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readFile reads a file outside the deploy directory (the module's README,
// docs, Makefile, go.mod).
func readFile(t *testing.T, rel string) string {
	t.Helper()
	root, err := os.OpenRoot("..")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = root.Close() }()
	b, err := fs.ReadFile(root.FS(), strings.TrimPrefix(rel, "../"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func urlHostPort(t *testing.T, url string) (host, port string) {
	t.Helper()
	_, rest, ok := strings.Cut(url, "://")
	if !ok {
		t.Fatalf("%q is not a URL", url)
	}
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		rest = rest[i+1:]
	}
	rest, _, _ = strings.Cut(rest, "/")
	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		t.Fatalf("%q: %v", url, err)
	}
	return host, port
}
