package events

import (
	"bytes"
	"context"
	"strings"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	"github.com/nats-io/nats.go"
)

// This file is the thin NATS protocol binding for sdk-go (the upstream NATS
// protocol module is not used). It follows the CloudEvents NATS protocol
// binding 1.0: structured mode carries the event JSON in the body with
// Content-Type application/cloudevents+json; binary mode carries attributes
// in "ce-" headers, datacontenttype in Content-Type, and data in the body.
// Header names are matched case-insensitively.

const (
	headerPrefix      = "ce-"
	headerContentType = "content-type"
)

// binarySpecs maps attribute names to binary-mode header names.
var binarySpecs = spec.WithPrefixMatchExact(func(name string) string {
	if name == "datacontenttype" {
		return headerContentType
	}
	return headerPrefix + name
}, headerPrefix)

// natsMessage adapts a NATS message to binding.Message. It implements
// binding.MessageMetadataReader as well, since binding.ToEvent needs it for
// binary messages.
type natsMessage struct {
	header  map[string]string // lower-case name → first value
	body    []byte
	format  format.Format
	version spec.Version
}

var (
	_ binding.Message               = (*natsMessage)(nil)
	_ binding.MessageMetadataReader = (*natsMessage)(nil)
)

// newNATSMessage wraps a message's header and body; it does not copy body.
func newNATSMessage(h nats.Header, body []byte) *natsMessage {
	m := &natsMessage{header: make(map[string]string, len(h)), body: body}
	for k, vs := range h {
		if len(vs) > 0 {
			m.header[strings.ToLower(k)] = vs[0]
		}
	}
	if f := format.Lookup(m.header[headerContentType]); f == format.JSON {
		m.format = f
	} else if sv, ok := m.header[headerPrefix+"specversion"]; ok {
		m.version = binarySpecs.Version(sv)
	}
	return m
}

// encoding names the content mode for logs and dead-letter reasons.
func (m *natsMessage) encoding() string {
	switch {
	case m.format != nil:
		return "structured"
	case m.version != nil:
		return "binary"
	default:
		return "unknown"
	}
}

func (m *natsMessage) ReadEncoding() binding.Encoding {
	switch {
	case m.format != nil:
		return binding.EncodingStructured
	case m.version != nil:
		return binding.EncodingBinary
	default:
		return binding.EncodingUnknown
	}
}

func (m *natsMessage) ReadStructured(ctx context.Context, w binding.StructuredWriter) error {
	if m.format == nil {
		return binding.ErrNotStructured
	}
	return w.SetStructuredEvent(ctx, m.format, bytes.NewReader(m.body))
}

func (m *natsMessage) ReadBinary(_ context.Context, w binding.BinaryWriter) error {
	if m.version == nil {
		return binding.ErrNotBinary
	}
	for k, v := range m.header {
		if attr := m.version.Attribute(k); attr != nil {
			if err := w.SetAttribute(attr, v); err != nil {
				return err
			}
		} else if name, ok := strings.CutPrefix(k, headerPrefix); ok && name != "" {
			if err := w.SetExtension(name, v); err != nil {
				return err
			}
		}
	}
	if len(m.body) > 0 {
		return w.SetData(bytes.NewReader(m.body))
	}
	return nil
}

func (m *natsMessage) GetAttribute(k spec.Kind) (spec.Attribute, any) {
	if m.version == nil {
		return nil, nil
	}
	attr := m.version.AttributeFromKind(k)
	if attr == nil {
		return nil, nil
	}
	name := headerPrefix + attr.Name()
	if attr.Name() == "datacontenttype" {
		name = headerContentType
	}
	if v, ok := m.header[name]; ok {
		return attr, v
	}
	return attr, nil
}

func (m *natsMessage) GetExtension(name string) any {
	if v, ok := m.header[headerPrefix+strings.ToLower(name)]; ok {
		return v
	}
	return nil
}

func (m *natsMessage) Finish(error) error { return nil }
