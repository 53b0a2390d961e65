package cli

import (
	"context"
	"net"
	"sync"
	"time"
)

// abortDialer dials the service's NATS connection so that a request can
// never reach the server after its claim's authority has ended:
//
//   - every TCP connection it makes closes abortively (SO_LINGER 0): bytes
//     not yet sent when the connection is closed are discarded by the kernel,
//     not delivered later after a partition heals;
//   - Abort closes the current connection at once, which the janitor asks
//     for when a delete got no reply and is still in doubt as its retries
//     end (the request may still be in a buffer on its way). The client
//     then reconnects; nothing it held back is resent (the connection has
//     no reconnect buffer, see connect).
type abortDialer struct {
	d net.Dialer

	mu   sync.Mutex
	conn net.Conn
}

func newAbortDialer(timeout time.Duration) *abortDialer {
	return &abortDialer{d: net.Dialer{Timeout: timeout}}
}

// Dial implements nats.CustomDialer.
func (a *abortDialer) Dial(network, address string) (net.Conn, error) {
	c, err := a.d.DialContext(context.Background(), network, address)
	if err != nil {
		return nil, err
	}
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	a.mu.Lock()
	a.conn = c
	a.mu.Unlock()
	return c, nil
}

// Abort closes the current connection abortively; the client reconnects.
func (a *abortDialer) Abort() {
	a.mu.Lock()
	c := a.conn
	a.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}
