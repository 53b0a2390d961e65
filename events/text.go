package events

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// This file keeps text honest: JSON decoding and header handling replace
// invalid UTF-8 (and unpaired surrogate escapes) with U+FFFD without a word,
// so an event whose id, actor or reason was garbled on the way would be
// handled with different text than it was sent with. Such events are
// refused instead.

// maxPartialID bounds the id carried with a rejected event.
const maxPartialID = 256

// checkUTF8 refuses an event whose CloudEvents headers or body hold text
// that is not valid UTF-8, or a JSON \u escape of an unpaired surrogate.
func checkUTF8(header nats.Header, body []byte) error {
	for k, vs := range header {
		name := strings.ToLower(k)
		if !strings.HasPrefix(name, headerPrefix) && name != headerContentType {
			continue
		}
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return invalid(ReasonMalformed, "header %s is not valid UTF-8", strconv.QuoteToASCII(clip(k)))
			}
		}
	}
	if !utf8.Valid(body) {
		return invalid(ReasonMalformed, "body is not valid UTF-8")
	}
	if at := badSurrogateEscape(body); at >= 0 {
		return invalid(ReasonMalformed, "body has an unpaired surrogate escape at byte %d", at)
	}
	return nil
}

// badSurrogateEscape returns the offset of the first \u escape of an
// unpaired UTF-16 surrogate in JSON text, or -1. Outside strings valid JSON
// has no backslash, so every backslash starts an escape.
func badSurrogateEscape(b []byte) int {
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		r, ok := hexEscape(b, i)
		if !ok {
			i++ // \" \\ \n …: skip the escaped byte
			continue
		}
		switch {
		case r >= 0xD800 && r <= 0xDBFF:
			if lo, ok := hexEscape(b, i+6); ok && lo >= 0xDC00 && lo <= 0xDFFF {
				i += 11
				continue
			}
			return i
		case r >= 0xDC00 && r <= 0xDFFF:
			return i
		}
		i += 5
	}
	return -1
}

// hexEscape reads a \uXXXX escape at b[i:].
func hexEscape(b []byte, i int) (rune, bool) {
	if i+6 > len(b) || b[i] != '\\' || b[i+1] != 'u' {
		return 0, false
	}
	var r rune
	for _, c := range b[i+2 : i+6] {
		var v byte
		switch {
		case '0' <= c && c <= '9':
			v = c - '0'
		case 'a' <= c && c <= 'f':
			v = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	return r, true
}

// PartialID is the CloudEvents id of a message that may be invalid
// otherwise: the ce-id header in binary mode, or the "id" member of a body
// that is a JSON object. It is "" when there is none, when it is not a
// non-empty string of valid text, or when it is longer than 256 bytes.
func PartialID(header nats.Header, body []byte) string {
	for k, vs := range header {
		if strings.EqualFold(k, headerPrefix+"id") && len(vs) > 0 {
			return usableID(vs[0])
		}
	}
	var head struct {
		ID json.RawMessage `json:"id"`
	}
	if json.Unmarshal(body, &head) != nil || len(head.ID) == 0 || !utf8.Valid(head.ID) || badSurrogateEscape(head.ID) >= 0 {
		return ""
	}
	var id string
	if json.Unmarshal(head.ID, &id) != nil {
		return ""
	}
	return usableID(id)
}

func usableID(id string) string {
	if strings.TrimSpace(id) == "" || len(id) > maxPartialID || !utf8.ValidString(id) {
		return ""
	}
	return id
}
