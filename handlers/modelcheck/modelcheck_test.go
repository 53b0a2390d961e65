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
	safetyOnly  = flag.Bool("modelcheck.safety-only", false, "ignore liveness violations (a shorter one would hide a safety counterexample)")
	measure     = flag.Bool("modelcheck.measure", false, "explore on past violations without reporting them: how large the state space is")
	controls    = flag.Bool("modelcheck.controls", false, "TestMutations also explores each mutation's scenario without the mutation (it must pass for the guard to be the one in the way)")
	bounds      = flag.String("modelcheck.bounds", "", "override bounds: time,faults,crashes,renewals,passes,duplicates,reasks")
	script      = flag.String("modelcheck.script", "", "replay a history written as step descriptions separated by ';' (with -modelcheck.config or -modelcheck.mutation)")
	withIssue23 = flag.Bool("modelcheck.issue23", false,
		"also explore the scenarios of issue #23 (bucket loss, a pending status before the answer, pauses), which find counterexamples on the code before the record format v3")
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
	if *withIssue23 {
		cs = append(cs, issue23Configs(deeper)...)
	}
	return cs
}

// issue23Configs are the scenarios of the faults issue #23 added to the
// model: the bucket lost (or a record expired), the backend's pending
// status between its restart request and the answer, a replica pausing
// between two requests of an effect. They stay out of the CI list
// (-modelcheck.issue23 adds them) until the code they find counterexamples
// in is replaced; to put them into CI, drop the flag's condition in
// configs.
func issue23Configs(deeper bool) []Config {
	cs := []Config{
		// 1: two claims on one job after the bucket is recreated.
		{Name: "bucket-loss", Attempts: true, Stamps: true, MaxSteps: 60, MaxLosses: 1},
		// 2: order lost with the records: attempts in events, unstamped
		// streams.
		{Name: "bucket-loss-unstamped", Attempts: true, MaxSteps: 60, MaxLosses: 1},
		{Name: "record-expiry", Attempts: true, MaxSteps: 60, MaxLosses: 1, RecordExpiry: true},
		// 3: a restart answered without its flush.
		{Name: "pending-between", Attempts: true, Stamps: true, PendingBetween: true, MaxSteps: 60, MaxCrashes: 1, Prompt: true},
		// Pauses between two requests of an effect, with time.
		{Name: "pause", Attempts: true, Stamps: true, MaxSteps: 60, MaxTime: 5, MaxPauses: 1, Prompt: true},
	}
	if deeper {
		cs = []Config{
			// 2 as the issue tells it: a late copy of the revoked event, or
			// of the restart request, after the bucket is lost.
			{Name: "deep-bucket-loss-duplicates", Attempts: true, MaxSteps: 60, MaxLosses: 1, MaxDuplicates: 1},
			{Name: "deep-record-expiry-duplicates", Attempts: true, MaxSteps: 60, MaxLosses: 1, RecordExpiry: true, MaxDuplicates: 1},
			{Name: "deep-bucket-loss-time", Attempts: true, Stamps: true, MaxSteps: 60, MaxTime: 5, MaxLosses: 1, MaxRenewals: 1},
			{Name: "deep-bucket-loss-faults", Attempts: true, Stamps: true, MaxSteps: 60, MaxLosses: 1, MaxFaults: 1},
			{Name: "deep-no-attempts-loss", ReplicaOffsets: [2]time.Duration{-3 * time.Second, 0}, BackendOffset: -5 * time.Hour,
				MaxSteps: 60, MaxLosses: 1, MaxReasks: 1},
			// Without attempts, a copy of the revoked event published after
			// the restart request is the newest event: no loss needed.
			{Name: "deep-no-attempts-duplicates", ReplicaOffsets: [2]time.Duration{-3 * time.Second, 0}, BackendOffset: -5 * time.Hour,
				MaxSteps: 60, MaxDuplicates: 1},
			// 3 through a flush that fails (its retries outlast its
			// authority).
			{Name: "deep-pending-between-time", Attempts: true, Stamps: true, PendingBetween: true, MaxSteps: 60, MaxTime: 5,
				MaxFaults: 1, Prompt: true},
			{Name: "deep-pause", Attempts: true, Stamps: true, MaxSteps: 60, MaxTime: 7, MaxPauses: 1, MaxReasks: 1, ReaskAfter: 4,
				MaxRenewals: 1, Prompt: true},
			{Name: "deep-pause-loss", Attempts: true, Stamps: true, MaxSteps: 60, MaxTime: 5, MaxPauses: 1, MaxLosses: 1, Prompt: true},
		}
	}
	for i := range cs {
		cs[i].StaleIsLiveness = true
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
			cfg.SafetyOnly = cfg.SafetyOnly || *safetyOnly
			cfg.Measure = *measure
			cfg.StaleIsLiveness = cfg.StaleIsLiveness || *withIssue23
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

// TestReplay replays one history given by -modelcheck.replay, or written
// as step descriptions by -modelcheck.script (e.g. "deliver e2 A; serve A
// kv get; lose; tick"): each picks the first enabled step whose description
// contains it.
func TestReplay(t *testing.T) {
	t.Parallel()
	if *replay == "" && *script == "" {
		t.Skip("no -modelcheck.replay or -modelcheck.script given")
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
		all := append(configs(false), configs(true)...)
		if !*withIssue23 {
			all = append(append(all, issue23Configs(false)...), issue23Configs(true)...)
		}
		for _, mc := range mutants {
			all = append(all, mc.cfg)
		}
		cfg = pick(t, all)[0]
	}
	synctest.Test(t, func(t *testing.T) {
		var choices []int
		if *script != "" {
			var patterns []string
			for _, p := range strings.Split(*script, ";") {
				if p = strings.TrimSpace(p); p != "" {
					patterns = append(patterns, p)
				}
			}
			var err error
			if choices, err = Script(cfg, synctest.Wait, patterns); err != nil {
				if ce, rerr := Replay(cfg, synctest.Wait, choices); rerr == nil {
					t.Logf("the steps that matched:\n%s", ce)
				}
				t.Fatal(err)
			}
		} else {
			for _, s := range strings.Split(*replay, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil {
					t.Fatalf("-modelcheck.replay: %v", err)
				}
				choices = append(choices, n)
			}
		}
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
	// Two claims overlap only when the bucket is lost; the network is prompt
	// and the only gap in an effect is the retry's backoff after a dropped
	// stream delete, so the first delete cannot meet a later run (problem
	// 1's way is closed) and the retry's comparison is what keeps the new
	// run's stream.
	{MutRetryIgnoresCreation, Config{Name: "loss-retry", Attempts: true, Stamps: true, MaxSteps: 60, MaxLosses: 1,
		MaxFaults: 1, DropStreamDeleteOnly: true, MaxPauses: 1, PauseAfterFailureOnly: true, Prompt: true}},
	// A flush pauses between its purge and its delete past its deadline;
	// the lease runs out and the repeated request is flushed by the other
	// replica; run 2 is created. Only the check before the delete stops it.
	{MutNoCheckAfterPurge, Config{Name: "pause-purge", Attempts: true, Stamps: true, MaxSteps: 30, MaxTime: 5, MaxPauses: 1,
		MaxReasks: 1, ReaskAfter: 4, Prompt: true}},
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
		if *controls {
			t.Run("control-"+mc.cfg.Name, func(t *testing.T) {
				t.Parallel()
				cfg := mc.cfg
				cfg.MaxStates = *maxState
				if *maxSteps > 0 {
					cfg.MaxSteps = *maxSteps
				}
				synctest.Test(t, func(t *testing.T) {
					res := Explore(cfg, synctest.Wait, realNow)
					t.Logf("%s without mutation: %d states, %d executions, %d steps in %s (truncated: %v)", cfg.Name, res.States,
						res.Executions, res.Steps, res.Took.Round(time.Millisecond), res.Truncated)
					if res.Violation != nil {
						t.Errorf("the scenario fails without the mutation, so %s's guard is not the only one in the way (%d steps):\n%s",
							mc.m, len(res.Violation.Choices), res.Violation)
					}
				})
			})
		}
		t.Run(mc.m.String(), func(t *testing.T) {
			t.Parallel()
			cfg := mc.cfg
			cfg.Mutation, cfg.MaxStates = mc.m, 200000
			if *maxState > 0 {
				cfg.MaxStates = *maxState
			}
			if *maxSteps > 0 {
				cfg.MaxSteps = *maxSteps
			}
			synctest.Test(t, func(t *testing.T) {
				res := Explore(cfg, synctest.Wait, realNow)
				t.Logf("%s on %s: %d states, %d executions, %d steps in %s (truncated: %v)", mc.m, cfg.Name, res.States, res.Executions,
					res.Steps, res.Took.Round(time.Millisecond), res.Truncated)
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
