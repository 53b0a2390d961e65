package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"time"
)

// Check reports one readiness condition; nil means ready.
type Check func(context.Context) error

// CheckTimeout bounds each readiness check: a probe with a 1 s timeout gets
// an answer even when a check hangs.
const CheckTimeout = 500 * time.Millisecond

// HealthHandler serves /healthz (the process is alive and serving), /readyz
// (every check passes; 503 with the failing checks otherwise) and, when
// metrics is not nil, /metrics. The checks run concurrently, each bounded by
// [CheckTimeout], so /readyz answers as soon as the slowest check does; a
// check that has not answered in time counts as failed.
func HealthHandler(checks map[string]Check, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		failed := runChecks(r.Context(), checks)
		if len(failed) > 0 {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unready", "failed": failed})
			return
		}
		names := make([]string, 0, len(checks))
		for name := range checks {
			names = append(names, name)
		}
		sort.Strings(names)
		writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "checks": names})
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}

// runChecks runs every check at once and returns the failures by name. A
// check still running at its deadline is reported as timed out and left to
// finish on its own (its context is cancelled).
func runChecks(ctx context.Context, checks map[string]Check) map[string]string {
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(checks)) // buffered: a late check never blocks
	for name, check := range checks {
		go func() { results <- result{name, check(ctx)} }()
	}
	failed := map[string]string{}
	answered := map[string]bool{}
	for len(answered) < len(checks) {
		select {
		case r := <-results:
			answered[r.name] = true
			if r.err != nil {
				failed[r.name] = r.err.Error()
			}
		case <-ctx.Done():
			for name := range checks {
				if !answered[name] {
					failed[name] = "no answer within " + CheckTimeout.String()
				}
			}
			return failed
		}
	}
	return failed
}

// WithPprof adds Go's profiler under /debug/pprof/ to h.
func WithPprof(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Server is the health and metrics HTTP listener.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen binds addr (e.g. ":8080"; port 0 picks a free one) for h.
func Listen(addr string, h http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &Server{ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}}, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until Shutdown; it returns nil after a clean shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the listener, letting requests in flight finish.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }
