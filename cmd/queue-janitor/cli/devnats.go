package cli

import (
	"context"
	"fmt"
)

const devNATSAbout = `Run a NATS server with JetStream, and nothing else, until interrupted
(SIGINT or SIGTERM). For development and tests only: the same in-process server
as serve --embedded-nats, without the service, so that a backend's behavior
can be tried while queue-janitor is down (its restart handshake then times out).
Prints "nats-url: <url>" on standard output once the server accepts clients.
Not for production: no authentication, no TLS, one node.`

// runDevNATS serves an embedded JetStream server until ctx ends.
func runDevNATS(ctx context.Context, args []string, cio cmdIO) error {
	c := EmbeddedConfig{Enabled: true, Listen: "127.0.0.1:4222"}
	f := newFlagSet("dev-nats", "", devNATSAbout)
	f.group("Server")
	f.String(&c.Listen, "listen", envPrefix+"DEV_NATS_LISTEN", "client address host:port (port 0: any free port)")
	f.String(&c.StoreDir, "store-dir", envPrefix+"DEV_NATS_STORE_DIR", "JetStream data directory (empty: a temporary one, removed at exit)")
	if err := parseFlags(f, args, cio); err != nil {
		return err
	}
	e, err := startEmbedded(c)
	if err != nil {
		return err
	}
	defer e.stop()
	fmt.Fprintf(cio.stdout, "nats-url: %s\n", e.URL())
	<-ctx.Done()
	return nil
}
