package modelcheck

import (
	"flag"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

var (
	deep     = flag.Bool("modelcheck.deep", false, "explore the deeper bounds (make check-model)")
	only     = flag.String("modelcheck.config", "", "explore only the configuration of that name")
	replay   = flag.String("modelcheck.replay", "", "replay one history: comma-separated choices (with -modelcheck.config)")
	mutation = flag.String("modelcheck.mutation", "", "replay or explore with this mutation")
	maxState = flag.Int("modelcheck.maxstates", 0, "stop each exploration after that many states (0: no limit)")
	maxSteps = flag.Int("modelcheck.maxsteps", 0, "override the bound on a history's length")
)

// TestMain fails the package if an execution leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// realNow is the wall clock, which time.Now is not inside a synctest
// bubble.
func realNow() time.Time {
	var tv syscall.Timeval
	if err := syscall.Gettimeofday(&tv); err != nil {
		panic(err)
	}
	return time.Unix(tv.Unix())
}

// configs are the scenarios, at CI bounds or deeper ones.
func configs(deeper bool) []Config {
	ci := []Config{
		{Name: "attempts+stamps", Attempts: true, Stamps: true, Run2Terminal: true,
			MaxSteps: 40, MaxTime: 6, MaxFaults: 1, MaxCrashes: 1, MaxRenewals: 1, MaxPasses: 1},
		{Name: "no-attempts", Run2Terminal: true, ReplicaOffsets: [2]time.Duration{0, 3 * time.Second},
			BackendOffset: -5 * time.Hour,
			MaxSteps: 40, MaxTime: 6, MaxFaults: 1, MaxCrashes: 1, MaxRenewals: 1, MaxPasses: 1},
	}
	if !deeper {
		return ci
	}
	for i := range ci {
		ci[i].MaxSteps, ci[i].MaxTime, ci[i].MaxFaults, ci[i].MaxCrashes = 60, 10, 2, 1
		ci[i].MaxRenewals, ci[i].MaxPasses, ci[i].MaxDuplicates, ci[i].MaxReasks = 2, 2, 1, 1
	}
	return ci
}

func pick(t *testing.T, cs []Config) []Config {
	t.Helper()
	if *only == "" {
		return cs
	}
	for _, c := range cs {
		if c.Name == *only {
			return []Config{c}
		}
	}
	t.Fatalf("no configuration named %q", *only)
	return nil
}

func mutationNamed(t *testing.T, name string) Mutation {
	t.Helper()
	for m, n := range mutationNames {
		if n == name {
			return m
		}
	}
	t.Fatalf("no mutation named %q", name)
	return MutNone
}

// TestProtocolExhaustive explores every interleaving of each scenario up
// to its bounds and fails with the shortest counterexample found.
func TestProtocolExhaustive(t *testing.T) {
	t.Parallel()
	if *replay != "" {
		t.Skip("replaying one history (TestReplay)")
	}
	for _, cfg := range pick(t, configs(*deep)) {
		t.Run(cfg.Name, func(t *testing.T) {
			t.Parallel()
			if *mutation != "" {
				cfg.Mutation = mutationNamed(t, *mutation)
			}
			cfg.MaxStates = *maxState
			if *maxSteps > 0 {
				cfg.MaxSteps = *maxSteps
			}
			synctest.Test(t, func(t *testing.T) {
				res := Explore(cfg, synctest.Wait, realNow)
				t.Logf("%s: %d states, %d executions, %d steps, %d complete histories checked for liveness, in %s (truncated: %v)",
					cfg.Name, res.States, res.Executions, res.Steps, res.Leaves, res.Took.Round(time.Millisecond), res.Truncated)
				if res.Violation != nil {
					t.Errorf("counterexample (%d steps; first found after %s):\n%s", len(res.Violation.Choices),
						res.FirstAfter.Round(time.Millisecond), res.Violation)
				}
			})
		})
	}
}

// TestReplay replays one history given by -modelcheck.replay.
func TestReplay(t *testing.T) {
	t.Parallel()
	if *replay == "" {
		t.Skip("no -modelcheck.replay given")
	}
	var choices []int
	for _, s := range strings.Split(*replay, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			t.Fatalf("-modelcheck.replay: %v", err)
		}
		choices = append(choices, n)
	}
	cfg := pick(t, configs(*deep))[0]
	if *mutation != "" {
		cfg.Mutation = mutationNamed(t, *mutation)
	}
	synctest.Test(t, func(t *testing.T) {
		ce, err := Replay(cfg, synctest.Wait, choices)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s", ce)
	})
}
