//go:build race

package modelcheck

// raceEnabled: under the race detector (make test-race) the exploration is
// an order of magnitude slower, so it is cut short there; make
// check-model-ci runs the CI bounds in full without it.
const raceEnabled = true
