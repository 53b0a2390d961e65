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
	deep        = flag.Bool("modelcheck.deep", false, "explore the deeper bounds (make check-model)")
	only        = flag.String("modelcheck.config", "", "explore only the configuration of that name")
	replay      = flag.String("modelcheck.replay", "", "replay one history: comma-separated choices (with -modelcheck.config)")
	mutation    = flag.String("modelcheck.mutation", "", "replay or explore with this mutation")
	maxState    = flag.Int("modelcheck.maxstates", 0, "stop each exploration after that many states (0: no limit)")
	maxSteps    = flag.Int("modelcheck.maxsteps", 0, "override the bound on a history's length")
	withMutants = flag.Bool("modelcheck.mutants", false, "run TestMutations")
	bounds      = flag.String("modelcheck.bounds", "", "override bounds: time,faults,crashes,renewals,passes,duplicates,reasks")
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

// ciStates caps each CI scenario's exploration, so that check-model-ci stays
// near a minute on two cores; `make check-model` explores further.
const ciStates = 60_000

// configs are the scenarios, at CI bounds or deeper ones. Time is the
// costliest dimension: every claim adds a deadline and a lease end at
// which a tick may fall, anywhere among the other steps.
func configs(deeper bool) []Config {
	cs := []Config{
		{Name: "time", Attempts: true, Stamps: true, MaxSteps: 60, MaxTime: 5, MaxStates: ciStates},
		{Name: "faults", Attempts: true, Stamps: true, MaxSteps: 60, MaxFaults: 1, MaxStates: ciStates},
		{Name: "crash", Attempts: true, Stamps: true, MaxSteps: 60, MaxCrashes: 1, MaxStates: ciStates},
		{Name: "no-attempts", ReplicaOffsets: [2]time.Duration{-3 * time.Second, 0}, BackendOffset: -5 * time.Hour,
			MaxSteps: 60, MaxFaults: 1, MaxStates: ciStates},
	}
	if deeper {
		cs = append(cs,
			Config{Name: "deep-time-crash", Attempts: true, Stamps: true, MaxSteps: 60, MaxTime: 5, MaxCrashes: 1, MaxRenewals: 1},
			Config{Name: "deep-time-fault", Attempts: true, Stamps: true, MaxSteps: 60, MaxTime: 5, MaxFaults: 1},
			Config{Name: "deep-time-7", Attempts: true, Stamps: true, MaxSteps: 60, MaxTime: 7},
			Config{Name: "deep-no-attempts", ReplicaOffsets: [2]time.Duration{-3 * time.Second, 0}, BackendOffset: -5 * time.Hour,
				MaxSteps: 60, MaxFaults: 1, MaxReasks: 1},
			Config{Name: "deep-reconciler", Attempts: true, Run2Terminal: true, MaxSteps: 60, MaxTime: 5, MaxPasses: 1},
			Config{Name: "deep-duplicates", Attempts: true, MaxSteps: 60, MaxFaults: 1, MaxCrashes: 1, MaxDuplicates: 1},
			Config{Name: "deep-started", Attempts: true, Run2Started: true, MaxSteps: 60, MaxDuplicates: 1},
		)
		cs = cs[4:]
	}
	return cs
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
			if *maxState > 0 || *deep {
				cfg.MaxStates = *maxState
			}
			if raceEnabled && (cfg.MaxStates == 0 || cfg.MaxStates > 2000) {
				cfg.MaxStates = 2000 // the race detector checks the harness; check-model-ci checks the bounds
			}
			if *maxSteps > 0 {
				cfg.MaxSteps = *maxSteps
			}
			if *bounds != "" {
				var b [7]int
				for i, f := range strings.Split(*bounds, ",") {
					b[i], _ = strconv.Atoi(f)
				}
				cfg.MaxTime, cfg.MaxFaults, cfg.MaxCrashes, cfg.MaxRenewals, cfg.MaxPasses, cfg.MaxDuplicates, cfg.MaxReasks =
					b[0], b[1], b[2], b[3], b[4], b[5], b[6]
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
	var cfg Config
	if *mutation != "" {
		// A mutation's counterexample replays in the mutation's scenario.
		m := mutationNamed(t, *mutation)
		for _, mc := range mutants {
			if mc.m == m {
				cfg = mc.cfg
			}
		}
		cfg.Mutation = m
	} else {
		cfg = pick(t, append(configs(false), configs(true)...))[0]
	}
	synctest.Test(t, func(t *testing.T) {
		ce, err := Replay(cfg, synctest.Wait, choices)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s", ce)
	})
}

// mutants pairs each mutation with a configuration in which the guard it
// disables is the one in the way.
var mutants = []struct {
	m   Mutation
	cfg Config
}{
	{MutAuthorityNeverExpires, Config{Name: "no-stamps-time", MaxSteps: 60, MaxTime: 9}},
	{MutReconnectBuffer, Config{Name: "no-stamps-faults", MaxSteps: 60, MaxFaults: 1}},
	{MutLeaseByHolderClock, Config{Name: "holder-behind", ReplicaOffsets: [2]time.Duration{-3 * time.Second, 0}, MaxSteps: 60, MaxTime: 9}},
	{MutFenceIgnoresCreation, Config{Name: "no-attempts-reask", MaxSteps: 60, MaxReasks: 1}},
	{MutAnswerBeforeRecord, Config{Name: "no-stamps-crash", MaxSteps: 60, MaxTime: 9, MaxCrashes: 1}},
}

// TestMutations shows that the checker finds what each guard prevents: with
// the guard disabled in the model, a counterexample must be found. It runs
// with -modelcheck.mutants (make check-model).
func TestMutations(t *testing.T) {
	t.Parallel()
	if !*withMutants {
		t.Skip("run with -modelcheck.mutants")
	}
	for _, mc := range mutants {
		t.Run(mc.m.String(), func(t *testing.T) {
			t.Parallel()
			cfg := mc.cfg
			cfg.Mutation, cfg.MaxStates = mc.m, 200000
			if *maxState > 0 {
				cfg.MaxStates = *maxState
			}
			synctest.Test(t, func(t *testing.T) {
				res := Explore(cfg, synctest.Wait, realNow)
				t.Logf("%s on %s: %d states, %d executions in %s (truncated: %v)", mc.m, cfg.Name, res.States, res.Executions,
					res.Took.Round(time.Millisecond), res.Truncated)
				if res.Violation == nil {
					t.Logf("%s: NO counterexample within the bounds", mc.m)
					return
				}
				t.Logf("%s: first counterexample after %s (%d steps); shortest found: %d steps\n%s", mc.m,
					res.FirstAfter.Round(time.Millisecond), res.FirstSteps, len(res.Violation.Choices), res.Violation)
			})
		})
	}
}
