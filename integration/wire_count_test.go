package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/example/queue-janitor/queue"
)

// This file counts what the service sends and receives on the wire, and how
// many of its round trips wait for one another, from the NATS protocol itself
// rather than from the service's own account of it (spans, logs).
//
// wireProxy stands between the service and the NATS server. It parses both
// directions of the protocol and records every message with the moment it
// passed: what the service sends (PUB, HPUB) goes on to the server at once;
// what the server sends (MSG, HMSG) is held for a fixed delay before it
// reaches the service. The delay makes dependence visible without trusting
// any clock but the proxy's: a request that reaches the proxy before a reply
// was released to the service cannot have waited for that reply; one that
// reaches it after may have. With a delay far longer than the service's own
// handling (100 ms against well under a millisecond), requests sent
// together (two deletes at once) arrive long before either reply is
// released, and a request sent on a reply arrives after it.

// wireDelay is how long the proxy holds each server→service message.
const wireDelay = 100 * time.Millisecond

// wireOp is one protocol message seen by the proxy.
type wireOp struct {
	// at is when it passed: for the service's messages when the proxy read
	// them (and sent them on), for the server's when the proxy released
	// them to the service.
	at         time.Time
	fromClient bool
	conn       int
	subject    string
	reply      string
	// header holds the message's headers (HPUB, HMSG), status is the
	// header block's status code (e.g. "100" for a heartbeat, "404").
	header map[string]string
	status string
	// payload is the start of the body (64 bytes at most).
	payload string
}

// wireProxy is a delaying, recording TCP proxy for one NATS client.
type wireProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration

	mu    sync.Mutex
	cond  *sync.Cond
	ops   []wireOp
	conns []net.Conn
	next  int
	wg    sync.WaitGroup
}

func newWireProxy(tb testing.TB, target string, delay time.Duration) *wireProxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &wireProxy{ln: ln, target: strings.TrimPrefix(target, "nats://"), delay: delay}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.close)
	return p
}

// URL is where the client reaches the server through the proxy.
func (p *wireProxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *wireProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *wireProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		id := p.next
		p.next++
		p.mu.Unlock()
		held := make(chan heldOp, 1<<16)
		p.wg.Add(3)
		go func() { // service → server: at once
			defer p.wg.Done()
			defer func() { _ = server.Close(); _ = client.Close() }()
			_ = readOps(client, true, func(raw []byte, op wireOp) error {
				op.at, op.conn = time.Now(), id
				if _, err := server.Write(raw); err != nil {
					return err
				}
				p.record(op)
				return nil
			})
		}()
		go func() { // server → service: held for the delay
			defer p.wg.Done()
			defer close(held)
			_ = readOps(server, false, func(raw []byte, op wireOp) error {
				op.conn = id
				held <- heldOp{raw: raw, op: op, due: time.Now().Add(p.delay)}
				return nil
			})
		}()
		go func() {
			defer p.wg.Done()
			for h := range held {
				time.Sleep(time.Until(h.due))
				// Recorded before the write: the service cannot have read
				// it earlier, and whatever it sends on reading it finds
				// it recorded.
				h.op.at = time.Now()
				p.record(h.op)
				if _, err := client.Write(h.raw); err != nil {
					_, _ = server.Close(), client.Close()
					for range held { // until the reader stops
					}
					return
				}
			}
		}()
	}
}

type heldOp struct {
	raw []byte
	op  wireOp
	due time.Time
}

func (p *wireProxy) record(op wireOp) {
	if op.subject == "" { // PING, PONG, SUB, INFO...: not messages
		return
	}
	p.mu.Lock()
	p.ops = append(p.ops, op)
	p.mu.Unlock()
	p.cond.Broadcast()
}

// snapshot returns the messages recorded so far.
func (p *wireProxy) snapshot() []wireOp {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]wireOp(nil), p.ops...)
}

// waitFor blocks until a recorded message from index from on satisfies
// match, and returns its index; false after timeout.
func (p *wireProxy) waitFor(from int, timeout time.Duration, match func(wireOp) bool) (int, bool) {
	timer := time.AfterFunc(timeout, p.cond.Broadcast)
	defer timer.Stop()
	deadline := time.Now().Add(timeout)
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := from; ; {
		for ; i < len(p.ops); i++ {
			if match(p.ops[i]) {
				return i, true
			}
		}
		if !time.Now().Before(deadline) {
			return 0, false
		}
		p.cond.Wait()
	}
}

// readOps parses the NATS protocol from r and calls fn with each operation's
// raw bytes and, for messages, what they carry.
func readOps(r io.Reader, fromClient bool, fn func(raw []byte, op wireOp) error) error {
	br := bufio.NewReaderSize(r, 1<<16)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		raw := append([]byte(nil), line...)
		args := strings.Fields(string(line))
		if len(args) == 0 {
			continue
		}
		op := wireOp{fromClient: fromClient}
		size, hdr := 0, 0
		switch verb := strings.ToUpper(args[0]); {
		case verb == "PUB" && (len(args) == 3 || len(args) == 4):
			op.subject = args[1]
			if len(args) == 4 {
				op.reply = args[2]
			}
			size, err = strconv.Atoi(args[len(args)-1])
		case verb == "HPUB" && (len(args) == 4 || len(args) == 5):
			op.subject = args[1]
			if len(args) == 5 {
				op.reply = args[2]
			}
			hdr, err = strconv.Atoi(args[len(args)-2])
			if err == nil {
				size, err = strconv.Atoi(args[len(args)-1])
			}
		case verb == "MSG" && (len(args) == 4 || len(args) == 5):
			op.subject = args[1]
			if len(args) == 5 {
				op.reply = args[3]
			}
			size, err = strconv.Atoi(args[len(args)-1])
		case verb == "HMSG" && (len(args) == 5 || len(args) == 6):
			op.subject = args[1]
			if len(args) == 6 {
				op.reply = args[3]
			}
			hdr, err = strconv.Atoi(args[len(args)-2])
			if err == nil {
				size, err = strconv.Atoi(args[len(args)-1])
			}
		}
		if err != nil {
			return fmt.Errorf("wire: bad control line %q: %w", line, err)
		}
		if op.subject != "" {
			body := make([]byte, size+2)
			if _, err := io.ReadFull(br, body); err != nil {
				return err
			}
			raw = append(raw, body...)
			op.header, op.status = parseHeader(body[:hdr])
			payload := body[hdr:size]
			op.payload = string(payload[:min(len(payload), 64)])
		}
		if err := fn(raw, op); err != nil {
			return err
		}
	}
}

// parseHeader reads a NATS header block: "NATS/1.0[ status[ text]]\r\n"
// then "Key: value" lines.
func parseHeader(b []byte) (map[string]string, string) {
	if len(b) == 0 {
		return nil, ""
	}
	lines := strings.Split(string(b), "\r\n")
	status := ""
	if f := strings.Fields(lines[0]); len(f) > 1 {
		status = f[1]
	}
	h := map[string]string{}
	for _, l := range lines[1:] {
		if k, v, ok := strings.Cut(l, ":"); ok {
			h[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return h, status
}

// wireNames says which resources are whose, to name each message's class.
type wireNames struct {
	queue.Names
	eventStream, consumer, bucket string
	// answerPrefixes are the subjects of the service's answers, up to {id}.
	answerPrefixes []string
}

// Classes of messages that no job's path sends: the intake's pull requests
// and its check of the event consumer.
const (
	classPull        = "pull request (events)"
	classWatch       = "consumer.info events (watch)"
	classBucketCheck = "stream.info bucket"
)

// class names what a message the service sent is for: a JetStream API
// request by its verb and whose resource it names ("stream.delete job",
// "consumer.delete dead-letter"), a key-value read or write of a job's
// record ("kv.get", "kv.create": a write expecting no record, "kv.update": a
// write expecting a revision; another key is named: "kv.get rebuild"), the
// event's settlement ("ack", "in progress", "nak", "term"), or "answer"
// (job.queue.cleaned/flushed).
func (n wireNames) class(op wireOp) string {
	s := op.subject
	// A key other than a job's record (the rebuild marker) is named.
	keyOf := func(subject string) string {
		_, key, _ := strings.Cut(subject, "$KV."+n.bucket+".")
		if strings.HasPrefix(key, "job.") {
			return ""
		}
		return " " + key
	}
	switch {
	case strings.HasPrefix(s, "$JS.API.DIRECT.GET.KV_"+n.bucket):
		return "kv.get" + keyOf(s)
	case strings.HasPrefix(s, "$KV."+n.bucket+"."):
		switch exp, ok := op.header["Nats-Expected-Last-Subject-Sequence"]; {
		case op.header["KV-Operation"] != "":
			return "kv." + strings.ToLower(op.header["KV-Operation"]) + keyOf(s)
		case ok && exp == "0":
			return "kv.create" + keyOf(s)
		case ok:
			return "kv.update" + keyOf(s)
		}
		return "kv.put" + keyOf(s)
	case strings.HasPrefix(s, "$JS.ACK."+n.eventStream+"."):
		switch {
		case strings.HasPrefix(op.payload, "+ACK"):
			return "ack"
		case strings.HasPrefix(op.payload, "+WPI"):
			return "in progress"
		case strings.HasPrefix(op.payload, "-NAK"):
			return "nak"
		case strings.HasPrefix(op.payload, "+TERM"):
			return "term"
		}
		return "ack " + op.payload
	case strings.HasPrefix(s, "$JS.API.CONSUMER.MSG.NEXT."+n.eventStream+"."):
		return classPull
	case strings.HasPrefix(s, "$JS.API."):
		t := strings.Split(strings.TrimPrefix(s, "$JS.API."), ".")
		if len(t) < 2 {
			return strings.ToLower(strings.Join(t, "."))
		}
		verb := strings.ToLower(t[0] + "." + t[1])
		if len(t) == 2 {
			return verb
		}
		if t[0] == "CONSUMER" && len(t) >= 4 {
			c := n.consumerKind(t[2], t[3])
			if c == "events" && verb == "consumer.info" {
				return classWatch
			}
			return verb + " " + c
		}
		return verb + " " + n.streamKind(t[2])
	}
	for _, p := range n.answerPrefixes {
		if strings.HasPrefix(s, p) {
			return "answer"
		}
	}
	return "publish " + s
}

func (n wireNames) streamKind(stream string) string {
	switch stream {
	case "KV_" + n.bucket:
		return "bucket"
	case n.eventStream:
		return "events"
	case n.AdvisoryStream:
		return "advisories"
	}
	if _, ok := n.JobFromStream(stream); ok {
		return "job"
	}
	return stream
}

func (n wireNames) consumerKind(stream, consumer string) string {
	switch {
	case stream == n.eventStream && consumer == n.consumer:
		return "events"
	case stream == n.AdvisoryStream:
		if _, ok := n.JobFromDeadLetterConsumer(consumer); ok {
			return "dead-letter"
		}
	}
	if _, ok := n.JobFromStream(stream); ok {
		return "task"
	}
	return stream + "/" + consumer
}

// wirePath is what one event's handling put on the wire, from its delivery
// to the service until the service acked it.
type wirePath struct {
	// sent counts the messages the service sent, by class; received the
	// replies it got (by the class of their request) and the event itself.
	sent, received map[string]int
	// roundTrips counts requests that got a reply.
	roundTrips int
	// sequential is the longest chain of round trips, each sent only after
	// the previous one's reply reached the service, before the answer was
	// sent (to the ack when there is no answer).
	sequential int
	// waves lists the round trips by their place in that chain (and the
	// answer, when it went out beside one of them), then what went out
	// without a reply.
	waves [][]string
	after []string
	// unanswered lists requests sent whose reply came after the ack.
	unanswered []string
	// timeline is the path message by message, for failure messages.
	timeline string
}

// wirePathOf reads the path from ops: from the delivery at index start
// (released to the service) to the ack at index end. Background messages
// (the intake's pull requests, its consumer check, heartbeats) are left out.
func (n wireNames) wirePathOf(ops []wireOp, start, end int) (wirePath, error) {
	from, to := ops[start].at, ops[end].at
	var in []wireOp // recorded just after they passed: ordered by when they passed
	for _, op := range ops {
		if !op.at.Before(from) && !op.at.After(to) {
			in = append(in, op)
		}
	}
	sort.SliceStable(in, func(i, j int) bool { return in[i].at.Before(in[j].at) })
	w := wirePath{sent: map[string]int{}, received: map[string]int{"event": 1}}
	type trip struct {
		class    string
		sent     time.Time
		released time.Time // zero: no reply yet
		level    int
	}
	trips := map[string]*trip{} // reply subject → request
	var order []*trip
	var answerAt time.Time
	var noReply []string
	for _, op := range in[1:] {
		if op.fromClient {
			c := n.class(op)
			if c == classPull || c == classWatch {
				continue
			}
			w.sent[c]++
			if c == "answer" {
				answerAt = op.at
			}
			if op.reply == "" || strings.HasPrefix(c, "ack") || c == "in progress" || c == "nak" || c == "term" || c == "answer" {
				noReply = append(noReply, c)
				continue
			}
			tr := &trip{class: c, sent: op.at}
			trips[op.reply] = tr
			order = append(order, tr)
			continue
		}
		if tr, ok := trips[op.subject]; ok && tr.released.IsZero() {
			tr.released = op.at
			w.received["reply: "+tr.class]++
			w.roundTrips++
		}
	}
	if answerAt.IsZero() {
		answerAt = to
	}
	for i, tr := range order {
		tr.level = 1
		for _, prev := range order[:i] {
			if !prev.released.IsZero() && prev.released.Before(tr.sent) && prev.level+1 > tr.level {
				tr.level = prev.level + 1
			}
		}
		if tr.released.IsZero() {
			// Sent, but the event was acked before its reply came: the
			// path did not wait for it.
			w.unanswered = append(w.unanswered, tr.class)
			continue
		}
		if tr.released.Before(answerAt) {
			w.sequential = max(w.sequential, tr.level)
		}
		for len(w.waves) < tr.level {
			w.waves = append(w.waves, nil)
		}
		w.waves[tr.level-1] = append(w.waves[tr.level-1], tr.class)
	}
	if i := w.sequential; !answerAt.Equal(to) && i < len(w.waves) {
		// The answer went out beside a later round trip (a terminal job's
		// answer beside its record write): show it in that wave.
		w.waves[i] = append(w.waves[i], "answer")
		noReply = slices.DeleteFunc(noReply, func(c string) bool { return c == "answer" })
	}
	w.after = noReply
	w.timeline = n.timeline(in)
	return w, nil
}

// timeline lists ops one a line, with milliseconds since the first, for
// failure messages.
func (n wireNames) timeline(ops []wireOp) string {
	var b strings.Builder
	for _, op := range ops {
		dir, what := "service ←", "reply or delivery"
		if op.fromClient {
			dir, what = "service →", n.class(op)
		}
		fmt.Fprintf(&b, "  %9.3f ms %s %-30s %s %s %s\n", float64(op.at.Sub(ops[0].at).Microseconds())/1000, dir, what, op.subject, op.reply, op.status)
	}
	return b.String()
}

// shape is the path in one line: each wave of round trips, then what was
// sent without a reply, e.g. "kv.get → kv.create → stream.info job →
// stream.delete job ∥ consumer.delete dead-letter → kv.update; then answer,
// ack".
func (w wirePath) shape() string {
	var parts []string
	for _, wave := range w.waves {
		s := append([]string(nil), wave...)
		sort.Strings(s)
		parts = append(parts, strings.Join(s, " ∥ "))
	}
	out := strings.Join(parts, " → ") + "; then " + strings.Join(w.after, ", ")
	if len(w.unanswered) > 0 {
		out += "; unanswered before the ack: " + strings.Join(w.unanswered, ", ")
	}
	return out
}

// total is the number of messages sent (or, with received, received).
func total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// diffCounts lists every class whose count differs, "kv.update: 1 → 2".
func diffCounts(want, got map[string]int) []string {
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	var out []string
	for k := range keys {
		if want[k] != got[k] {
			out = append(out, fmt.Sprintf("%s: %d → %d", k, want[k], got[k]))
		}
	}
	sort.Strings(out)
	return out
}

// errWireTimeout is returned when the proxy saw no expected message in time.
var errWireTimeout = errors.New("wire: timed out")

// counts formats a class→count map in a stable order.
func counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, m[k])
	}
	return b.String()
}
