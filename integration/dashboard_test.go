package integration

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/example/queue-janitor/events"
)

// dashboardFile is the Grafana dashboard deploy/compose.yaml provisions.
const dashboardFile = "../deploy/grafana/dashboards/queue-janitor.json"

// scrapeLabels are the labels Prometheus adds to every series it scrapes.
var scrapeLabels = []string{"instance", "job"}

// series is a /metrics scrape: metric name -> the label sets of its samples.
type series map[string][]map[string]string

var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$`)
	labelPair  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// parseScrape reads the Prometheus text format.
func parseScrape(t *testing.T, text string) series {
	t.Helper()
	out := series{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("/metrics line %q is not a sample", line)
		}
		labels := map[string]string{}
		for _, p := range labelPair.FindAllStringSubmatch(m[2], -1) {
			labels[p[1]] = p[2]
		}
		out[m[1]] = append(out[m[1]], labels)
	}
	return out
}

// scrapeMetrics reads addr's /metrics.
func scrapeMetrics(t *testing.T, addr string) (string, series) {
	t.Helper()
	code, text := httpGet(t, "http://"+addr+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, text)
	}
	return text, parseScrape(t, text)
}

// TestMetricsPresentAtStart: the first scrape of a freshly started serve,
// before any event, shows the counter series a dashboard or an absent()
// alert needs, at zero.
func TestMetricsPresentAtStart(t *testing.T) {
	t.Parallel()
	e := setup(t)
	addr := freeAddr(t)
	e.startService("--http-addr", addr)
	text, _ := scrapeMetrics(t, addr)
	for _, s := range []string{
		`queue_janitor_events_total{decision="cleanup",result="removed",status="revoked"}`,
		`queue_janitor_events_total{decision="cleanup",result="removed",status="failure"}`,
		`queue_janitor_events_total{decision="cleanup",result="removed",status="cancelled"}`,
		`queue_janitor_events_total{decision="cleanup",result="retry",status="revoked"}`,
		`queue_janitor_events_total{decision="stale",result="skipped",status="revoked"}`,
		`queue_janitor_events_total{decision="flush",result="nothing_to_remove",status="restart_requested"}`,
		`queue_janitor_events_total{decision="flush",result="removed",status="restart_requested"}`,
		`queue_janitor_deadletters_total{reason="malformed"}`,
		`queue_janitor_deadletters_total{reason="retries_exhausted"}`,
		`queue_janitor_retries_total{operation="jetstream.delete_stream"}`,
		`queue_janitor_retries_total{operation="kv.update"}`,
		`queue_janitor_messages_discarded_total{action="cleanup"}`,
		`queue_janitor_messages_discarded_total{action="flush"}`,
		`queue_janitor_reconciler_actions_total{verdict="clean"}`,
		`queue_janitor_reconciler_orphans_total`,
	} {
		if v, ok := metricValue(text, s); !ok || v != 0 {
			t.Errorf("first scrape: %s = %v (present %v), want 0", s, v, ok)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grepLines(text, "queue_janitor"))
	}
}

// TestDashboardQueriesNameExportedMetrics: every query of the Grafana
// dashboard parses as PromQL (the Prometheus parser), and every metric,
// label matcher and grouping label it names is on the /metrics of a running
// serve, once it has handled an event (the histograms) and run a reconciler
// pass (the triage gauges).
func TestDashboardQueriesNameExportedMetrics(t *testing.T) {
	t.Parallel()
	exprs := dashboardExprs(t)
	if len(exprs) < 10 {
		t.Fatalf("%s: only %d queries", dashboardFile, len(exprs))
	}

	e := setup(t)
	addr := freeAddr(t)
	e.startService("--http-addr", addr, "--reconcile-interval", "1s")
	e.provision(1, 10, events.Attempt(1))
	e.emit(events.StatusEvent{JobID: 1, Status: events.StatusRevoked, Attempt: events.Attempt(1)})
	e.awaitJobsGone(t, 1, 20*time.Second, "job 1 cleaned")
	var got series
	eventually(t, 20*time.Second, "the event's histograms and a reconciler pass on /metrics", func() bool {
		_, got = scrapeMetrics(t, addr)
		return len(got["queue_janitor_action_duration_seconds_bucket"]) > 0 &&
			len(got["queue_janitor_event_lag_seconds_bucket"]) > 0 && len(got["queue_janitor_job_messages_pending"]) > 0
	})

	p := parser.NewParser(parser.Options{})
	for _, expr := range exprs {
		ast, err := p.ParseExpr(grafanaVariables.Replace(expr))
		if err != nil {
			t.Errorf("query %q: %v", expr, err)
			continue
		}
		for _, problem := range unexported(ast, got) {
			t.Errorf("query %q: %s", expr, problem)
		}
	}
	if t.Failed() {
		names := make([]string, 0, len(got))
		for n := range got {
			if strings.HasPrefix(n, "queue_janitor_") {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		t.Logf("queue_janitor metrics on /metrics: %v", names)
	}
}

// grafanaVariables replaces the Grafana variables the dashboard may use with
// values PromQL accepts.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "1m", "${__rate_interval}", "1m",
	"$__interval", "1m", "${__interval}", "1m", "$__range", "1h", "${__range}", "1h")

// dashboardExprs reads every query of the dashboard, rows included.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var exprs []string
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("%s: %v", dashboardFile, err)
			}
			for _, tg := range p.Targets {
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return exprs
}

// unexported lists what a parsed query names that the scrape lacks: a
// metric, a label a matcher or a grouping uses, a value an equality matcher
// wants.
func unexported(ast parser.Node, got series) []string {
	var problems []string
	parser.Inspect(ast, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			samples := got[n.Name]
			if len(samples) == 0 {
				problems = append(problems, "metric "+n.Name+" is not on /metrics")
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name == "__name__" || slices.Contains(scrapeLabels, m.Name) {
					continue
				}
				if !slices.ContainsFunc(samples, func(l map[string]string) bool { return m.Matches(l[m.Name]) }) {
					problems = append(problems, "no series "+n.Name+" matches "+m.String())
				}
			}
		case *parser.AggregateExpr:
			if n.Without {
				return nil
			}
			for _, name := range selectorNames(n.Expr) {
				for _, l := range n.Grouping {
					if slices.Contains(scrapeLabels, l) {
						continue
					}
					if !slices.ContainsFunc(got[name], func(s map[string]string) bool { _, ok := s[l]; return ok }) {
						problems = append(problems, "by ("+l+"): "+name+" has no label "+l)
					}
				}
			}
		}
		return nil
	})
	return problems
}

// selectorNames are the metric names selected below node.
func selectorNames(node parser.Node) []string {
	var names []string
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}
