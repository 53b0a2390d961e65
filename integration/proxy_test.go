package integration

import (
	"bytes"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// tcpProxy stands between one replica and the NATS server, so that a test
// can cut, freeze and restore that replica's network: a real TCP path, not a
// mock of NATS.
//
// A freeze is a black hole as TCP sees one: bytes sent by either side are
// held in the network, and delivered when the freeze ends, unless the side
// that sent them has closed its connection meanwhile (the replica aborting
// a connection whose request got no reply): then they are discarded, as a
// closed socket's unsent bytes are, and never delivered.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	cond     *sync.Cond
	conns    map[net.Conn]struct{}
	refusing bool
	frozen   bool
	triggers []*proxyTrigger
	accepted int
	// slow delays the client's requests on subjects starting with
	// slowPrefix by slowBy, passing everything else at once.
	slowPrefix []byte
	slowBy     time.Duration
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
}

func newTCPProxy(tb testing.TB, target string) *tcpProxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	go p.accept()
	tb.Cleanup(func() {
		_ = ln.Close()
		p.restore()
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

// restore accepts connections again and ends a freeze.
func (p *tcpProxy) restore() {
	p.mu.Lock()
	p.refusing, p.frozen = false, false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// freeze holds every byte in both directions without closing anything: a
// replica cut off by a black hole, as its peers see it.
func (p *tcpProxy) freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

// slowRequests makes the server look slow on some requests: a request
// whose subject starts with prefix reaches the server d later, while the
// connection's other traffic goes on (as a server whose deletes queue behind
// slow file removals answers them late but its stream-info requests at
// once). It applies to connections made after the call.
func (p *tcpProxy) slowRequests(prefix string, d time.Duration) {
	p.mu.Lock()
	p.slowPrefix, p.slowBy = []byte(prefix), d
	p.mu.Unlock()
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
		if p.slowPrefix != nil {
			go p.slowPipe(client, server, p.slowPrefix, p.slowBy)
		} else {
			go p.pipe(client, server, true)
		}
		go p.pipe(server, client, false)
	}
}

// pipe carries src's bytes to dst: a reader takes them off src as they
// come, a writer hands them on unless frozen.
func (p *tcpProxy) pipe(src, dst net.Conn, fromClient bool) {
	var queue [][]byte
	closed := false
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			p.mu.Lock()
			if n > 0 {
				queue = append(queue, append([]byte(nil), buf[:n]...))
			}
			if err != nil {
				closed = true
			}
			p.cond.Broadcast()
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		_ = src.Close()
		_ = dst.Close()
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		p.mu.Unlock()
	}()
	for {
		p.mu.Lock()
		for (p.frozen && !closed) || (len(queue) == 0 && !closed) {
			p.cond.Wait()
		}
		if p.frozen || len(queue) == 0 {
			// Closed while frozen: its unsent bytes go with it. Closed
			// with nothing left: done.
			p.mu.Unlock()
			return
		}
		chunk := queue[0]
		queue = queue[1:]
		var tr *proxyTrigger
		if fromClient {
			tr = p.matchLocked(chunk)
		}
		p.mu.Unlock()
		if tr != nil {
			p.fire(tr, chunk, src, dst)
			return
		}
		if _, err := dst.Write(chunk); err != nil {
			return
		}
	}
}

func (p *tcpProxy) matchLocked(chunk []byte) *proxyTrigger {
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
	close(tr.fired)
}

// slowPipe carries the client's bytes to the server protocol message by
// protocol message, holding back those that publish to prefix for d.
func (p *tcpProxy) slowPipe(client, server net.Conn, prefix []byte, d time.Duration) {
	var wmu sync.Mutex
	write := func(b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		_, err := server.Write(b)
		return err
	}
	defer func() {
		_ = client.Close()
		_ = server.Close() // requests still held go with the connection
		p.mu.Lock()
		delete(p.conns, client)
		delete(p.conns, server)
		p.mu.Unlock()
	}()
	var pending []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := client.Read(buf)
		pending = append(pending, buf[:n]...)
		for {
			msg, rest, ok := nextProtocolMessage(pending)
			if !ok {
				break
			}
			pending = rest
			if bytes.HasPrefix(msg, []byte("PUB ")) && bytes.HasPrefix(msg[4:], prefix) ||
				bytes.HasPrefix(msg, []byte("HPUB ")) && bytes.HasPrefix(msg[5:], prefix) {
				held := append([]byte(nil), msg...)
				time.AfterFunc(d, func() { _ = write(held) })
				continue
			}
			if werr := write(msg); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// nextProtocolMessage splits the first whole client protocol message off
// b: a control line, with its payload for PUB and HPUB.
func nextProtocolMessage(b []byte) (msg, rest []byte, ok bool) {
	end := bytes.Index(b, []byte("\r\n"))
	if end < 0 {
		return nil, b, false
	}
	line := b[:end]
	size := -1
	switch {
	case bytes.HasPrefix(line, []byte("PUB ")), bytes.HasPrefix(line, []byte("HPUB ")):
		f := bytes.Fields(line)
		if _, err := fmt.Sscan(string(f[len(f)-1]), &size); err != nil {
			return nil, b, false
		}
	}
	total := end + 2
	if size >= 0 {
		total += size + 2
	}
	if len(b) < total {
		return nil, b, false
	}
	return b[:total], b[total:], true
}
