package deploy_test

import (
	"encoding/json"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// Where the Grafana image reads its provisioning.
const (
	grafanaDatasources = "/etc/grafana/provisioning/datasources"
	grafanaProviders   = "/etc/grafana/provisioning/dashboards"
)

// grafanaDashboard is what the checks read of a dashboard's JSON.
type grafanaDashboard struct {
	UID    string         `json:"uid"`
	Title  string         `json:"title"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaPanel struct {
	Type       string             `json:"type"`
	Title      string             `json:"title"`
	Datasource *grafanaDatasource `json:"datasource"`
	Targets    []struct {
		Datasource *grafanaDatasource `json:"datasource"`
		Expr       string             `json:"expr"`
		RefID      string             `json:"refId"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// TestManifestGrafana checks the Grafana service of compose.yaml and what it
// mounts from deploy/grafana/: a pinned image; the datasource is the compose
// Prometheus (the one that scrapes the replicas); the dashboard provider
// reads the mounted dashboards; each dashboard names that datasource and has
// the panels the triage needs. integration/dashboard_test.go checks that
// every query parses as PromQL and names only metrics the service exports.
func TestManifestGrafana(t *testing.T) {
	t.Parallel()
	var f struct {
		Services map[string]struct {
			Image       string   `yaml:"image"`
			Volumes     []string `yaml:"volumes"`
			Ports       []string `yaml:"ports"`
			Environment any      `yaml:"environment"`
			DependsOn   any      `yaml:"depends_on"`
			Healthcheck *struct {
				Test any `yaml:"test"`
			} `yaml:"healthcheck"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(readBytes(t, "compose.yaml"), &f); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	var name, promName string
	for n, s := range f.Services {
		repo, _ := imageRef(s.Image)
		switch {
		case strings.HasSuffix(repo, "/grafana/grafana") || strings.HasSuffix(repo, "/grafana/grafana-oss"):
			name = n
		case strings.HasSuffix(repo, "prometheus"):
			promName = n
		}
	}
	if name == "" || promName == "" {
		t.Fatalf("compose.yaml: want a Grafana and a Prometheus service, found %q and %q", name, promName)
	}
	g := f.Services[name]
	if _, tag := imageRef(g.Image); !regexp.MustCompile(`^\d+\.\d+\.\d+`).MatchString(tag) {
		t.Errorf("%s: image %q: pin a release (docker.io/grafana/grafana:X.Y.Z)", name, g.Image)
	}
	if g.Healthcheck == nil || g.Healthcheck.Test == nil {
		t.Errorf("%s: no health check", name)
	}
	if dependsOn(g.DependsOn)[promName] != "service_healthy" {
		t.Errorf("%s: should wait for %s to be healthy", name, promName)
	}

	// The datasource: the compose Prometheus, on the port it listens on.
	dsDir := mountSource(g.Volumes, grafanaDatasources)
	if dsDir == "" {
		t.Fatalf("%s: %s is not a bind mount from deploy/", name, grafanaDatasources)
	}
	var promUIDs []string
	for _, file := range yamlFiles(t, dsDir) {
		var ds struct {
			Datasources []struct {
				Name, UID, Type, URL, Access string
			} `yaml:"datasources"`
		}
		if err := yaml.Unmarshal(readBytes(t, file), &ds); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for _, d := range ds.Datasources {
			if d.Type != "prometheus" {
				continue
			}
			host, port := urlHostPort(t, d.URL)
			if host != promName || !slices.ContainsFunc(f.Services[promName].Ports, func(p string) bool {
				return strings.HasSuffix(p, ":"+port)
			}) {
				t.Errorf("%s: datasource %q URL %s is not the %s service's port", file, d.Name, d.URL, promName)
			}
			if d.Access != "proxy" {
				t.Errorf("%s: datasource %q access %q: want proxy (the browser cannot resolve %s)", file, d.Name, d.Access, promName)
			}
			if d.UID == "" {
				t.Errorf("%s: datasource %q has no uid for the dashboards to name", file, d.Name)
			}
			promUIDs = append(promUIDs, d.UID)
		}
	}
	if len(promUIDs) != 1 {
		t.Fatalf("%s: %d Prometheus datasources, want 1", dsDir, len(promUIDs))
	}

	// The dashboard provider reads a mounted directory of dashboards.
	provDir := mountSource(g.Volumes, grafanaProviders)
	if provDir == "" {
		t.Fatalf("%s: %s is not a bind mount from deploy/", name, grafanaProviders)
	}
	var dashDirs []string
	for _, file := range yamlFiles(t, provDir) {
		var p struct {
			Providers []struct {
				Type    string `yaml:"type"`
				Options struct {
					Path string `yaml:"path"`
				} `yaml:"options"`
			} `yaml:"providers"`
		}
		if err := yaml.Unmarshal(readBytes(t, file), &p); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for _, pr := range p.Providers {
			dir := mountSource(g.Volumes, pr.Options.Path)
			if pr.Type != "file" || dir == "" {
				t.Errorf("%s: provider path %q is not a directory compose mounts from deploy/", file, pr.Options.Path)
				continue
			}
			dashDirs = append(dashDirs, dir)
		}
	}
	if len(dashDirs) == 0 {
		t.Fatalf("%s: no dashboard provider", provDir)
	}
	dashboards := 0
	for _, dir := range dashDirs {
		entries, err := fs.ReadDir(files, dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if path.Ext(e.Name()) == ".json" {
				checkDashboard(t, path.Join(dir, e.Name()), promUIDs[0])
				dashboards++
			}
		}
	}
	if dashboards == 0 {
		t.Errorf("%v: no dashboard", dashDirs)
	}
	if home := environment(t, g.Environment)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; home != "" {
		dir, file := path.Split(home)
		if src := mountSource(g.Volumes, path.Clean(dir)); src == "" || !fileExists(path.Join(src, file)) {
			t.Errorf("%s: home dashboard %s is not a mounted file", name, home)
		}
	}
}

// checkDashboard: valid JSON with a uid; every panel queries the provisioned
// Prometheus; the panels the triage needs are there.
func checkDashboard(t *testing.T, file, promUID string) {
	t.Helper()
	var d grafanaDashboard
	if err := json.Unmarshal(readBytes(t, file), &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("%s: a provisioned dashboard needs a uid and a title", file)
	}
	var exprs []string
	for _, p := range dashboardPanels(d.Panels) {
		if len(p.Targets) == 0 {
			t.Errorf("%s: panel %q has no query", file, p.Title)
		}
		if p.Datasource == nil || p.Datasource.UID != promUID {
			t.Errorf("%s: panel %q datasource %+v, want the provisioned uid %q", file, p.Title, p.Datasource, promUID)
		}
		for _, tg := range p.Targets {
			if tg.Datasource != nil && tg.Datasource.UID != promUID {
				t.Errorf("%s: panel %q query %s datasource %+v, want uid %q", file, p.Title, tg.RefID, tg.Datasource, promUID)
			}
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s: panel %q query %s is empty", file, p.Title, tg.RefID)
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	all := strings.Join(exprs, "\n")
	for what, re := range map[string]string{
		"events":                     `queue_janitor_events_total\b`,
		"decisions":                  `by \([^)]*\bdecision\b[^)]*\) \(rate\(queue_janitor_events_total`,
		"retries":                    `queue_janitor_retries_total\b`,
		"dead letters":               `queue_janitor_deadletters_total\b`,
		"latency":                    `histogram_quantile\([^,]+, sum by \([^)]*\ble\b[^)]*\) \(rate\(queue_janitor_action_duration_seconds_bucket`,
		"pending on terminal jobs":   `queue_janitor_job_messages_pending\{job_state="terminal"\}`,
		"event lag":                  `queue_janitor_event_lag_seconds_bucket\b`,
		"messages discarded":         `queue_janitor_messages_discarded_total\b`,
		"reconciler removals":        `queue_janitor_reconciler_actions_total\b`,
		"job streams by job state":   `by \(job_state\) \(queue_janitor_job_streams\)`,
		"tasks pending by job state": `by \(job_state\) \(queue_janitor_job_messages_pending\)`,
	} {
		if !regexp.MustCompile(re).MatchString(all) {
			t.Errorf("%s: no panel for %s (a query matching %s)", file, what, re)
		}
	}
}

// dashboardPanels flattens rows: the panels that query.
func dashboardPanels(panels []grafanaPanel) []grafanaPanel {
	var out []grafanaPanel
	for _, p := range panels {
		if p.Type == "row" {
			out = append(out, dashboardPanels(p.Panels)...)
			continue
		}
		out = append(out, p)
	}
	return out
}

// yamlFiles lists the YAML files of a directory under deploy/.
func yamlFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := fs.ReadDir(files, dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if ext := path.Ext(e.Name()); ext == ".yaml" || ext == ".yml" {
			out = append(out, path.Join(dir, e.Name()))
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no YAML file", dir)
	}
	return out
}

func fileExists(name string) bool {
	_, err := fs.Stat(files, name)
	return err == nil
}
