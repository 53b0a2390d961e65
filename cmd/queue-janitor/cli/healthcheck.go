package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

const healthcheckAbout = `Probe the health listener of the queue-janitor serve running on this host:
exit 0 when the path answers 200, 1 otherwise. For container health checks on
an image without a shell or HTTP client (Docker HEALTHCHECK, compose healthcheck).`

func runHealthcheck(ctx context.Context, args []string, cio cmdIO) error {
	cfg := DefaultConfig()
	path := "/readyz"
	f := newFlagSet("healthcheck", "", healthcheckAbout)
	httpFlags(f, &cfg)
	f.group("Probe")
	f.String(&path, "path", envPrefix+"HEALTHCHECK_PATH", "path to probe: /readyz (ready) or /healthz (alive)")
	if err := parseFlags(f, args, cio); err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(cfg.HTTPAddr)
	if err != nil || port == "" {
		return fmt.Errorf("%w: --http-addr %q: the health listener address of serve (host:port)", ErrUsage, cfg.HTTPAddr)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	url := "http://" + net.JoinHostPort(host, port) + path
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("health check %s: %w", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health check %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	fmt.Fprintf(cio.stdout, "%s: %s\n", url, bytes.TrimSpace(body))
	return nil
}
