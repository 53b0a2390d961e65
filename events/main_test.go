package events

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: the
// dispatcher, the publisher's NATS connections and the embedded servers
// must all be gone at the end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
