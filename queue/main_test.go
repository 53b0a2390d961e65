package queue

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: every
// server, connection and Remove started by a test must end with it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
