package integration

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"
)

// tcpProxy stands between one replica and the NATS server, so that a test
// can cut, freeze and restore that replica's network: a real TCP path, not a
// mock of NATS.
type tcpProxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	refusing bool
	frozen   chan struct{} // closed when not frozen
	triggers []*proxyTrigger
	accepted int
}

// proxyAction is what a trigger does with the client's bytes that matched.
type proxyAction int

const (
	// dropAndCut drops the bytes, cuts every connection and refuses new
	// ones until restore: a partition that starts as the request leaves.
	dropAndCut proxyAction = iota
	// forwardThenCut sends the bytes on, then cuts every connection at
	// once (new ones are accepted): the request reaches the server, its
	// reply is lost.
	forwardThenCut
)

type proxyTrigger struct {
	pattern []byte
	action  proxyAction
	fired   chan struct{}
	once    sync.Once
}

func newTCPProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{t: t, ln: ln, target: target, conns: map[net.Conn]struct{}{}, frozen: make(chan struct{})}
	close(p.frozen)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.cutAll()
	})
	return p
}

// URL is where a client reaches the server through the proxy.
func (p *tcpProxy) URL() string { return "nats://" + p.ln.Addr().String() }

// on arms a trigger on the client's bytes; the returned channel is closed
// when it fires (once).
func (p *tcpProxy) on(pattern string, action proxyAction) <-chan struct{} {
	tr := &proxyTrigger{pattern: []byte(pattern), action: action, fired: make(chan struct{})}
	p.mu.Lock()
	p.triggers = append(p.triggers, tr)
	p.mu.Unlock()
	return tr.fired
}

// cut closes every connection and refuses new ones until restore.
func (p *tcpProxy) cut() {
	p.mu.Lock()
	p.refusing = true
	p.mu.Unlock()
	p.cutAll()
}

// restore accepts connections again (and thaws a freeze).
func (p *tcpProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refusing = false
	select {
	case <-p.frozen:
	default:
		close(p.frozen)
	}
}

// freeze holds every byte in both directions without closing anything: a
// replica paused (or a network black hole) as its peers see it.
func (p *tcpProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.frozen:
		p.frozen = make(chan struct{})
	default:
	}
}

// connections is how many connections the proxy has accepted in all.
func (p *tcpProxy) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

func (p *tcpProxy) cutAll() {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

func (p *tcpProxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refusing := p.refusing
		p.mu.Unlock()
		if refusing {
			_ = client.Close()
			continue
		}
		server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		p.conns[client], p.conns[server] = struct{}{}, struct{}{}
		p.accepted++
		p.mu.Unlock()
		go p.pipe(client, server, true)
		go p.pipe(server, client, false)
	}
}

// pipe copies from src to dst, holding bytes while frozen and running the
// triggers on the client's bytes.
func (p *tcpProxy) pipe(src, dst net.Conn, fromClient bool) {
	defer func() {
		_ = src.Close()
		_ = dst.Close()
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		p.mu.Unlock()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			p.mu.Lock()
			gate := p.frozen
			p.mu.Unlock()
			<-gate
			if fromClient {
				if tr := p.match(chunk); tr != nil {
					p.fire(tr, chunk, src, dst)
					return
				}
			}
			if _, werr := dst.Write(chunk); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a cut: both directions end
		}
	}
}

func (p *tcpProxy) match(chunk []byte) *proxyTrigger {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, tr := range p.triggers {
		if bytes.Contains(chunk, tr.pattern) {
			p.triggers = append(p.triggers[:i], p.triggers[i+1:]...)
			return tr
		}
	}
	return nil
}

func (p *tcpProxy) fire(tr *proxyTrigger, chunk []byte, client, server net.Conn) {
	switch tr.action {
	case dropAndCut:
		p.cut()
	case forwardThenCut:
		// The client goes first, so that no reply can reach it; the server
		// then gets the request, followed by the end of the connection.
		_ = client.Close()
		_, _ = server.Write(chunk)
		if tcp, ok := server.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
		time.Sleep(50 * time.Millisecond)
		_ = server.Close()
	}
	tr.once.Do(func() { close(tr.fired) })
}
