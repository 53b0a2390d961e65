package telemetry

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a provider or exporter is left running.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
