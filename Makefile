# queue-janitor: the usual targets. `make help` lists them.
SHELL := /bin/bash
GO    ?= go
PKGS  := ./...
# Pinned tool versions (staticcheck is pinned in go.mod as a tool).
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
# A count of executions, not a duration: Go 1.26's fuzzer can report a spurious
# "context deadline exceeded" failure when a duration ends under load
# (golang/go#75804, fixed in Go 1.27). 40,000 runs take about 10 s here.
FUZZTIME ?= 40000x
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/example/queue-janitor/cmd/queue-janitor/cli.Version=$(VERSION)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z][a-z0-9.-]*:.*## ' $(MAKEFILE_LIST) | sort | awk -F ':.*## ' '{printf "  %-17s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## replay the incident on an embedded NATS server (the one-command tour)
	$(GO) run ./cmd/queue-janitor demo

# A built binary, not `go run`: a SIGTERM to `go run` leaves its child, the
# service, running. Ctrl-C reaches both make and the service; a supervisor
# or script that sends SIGTERM should run bin/queue-janitor itself.
.PHONY: run
run: build ## build, then run the service on an embedded NATS server at 127.0.0.1:4222
	exec bin/queue-janitor serve --embedded-nats

.PHONY: build
build: ## build a static binary into bin/ (the same flags as deploy/Dockerfile)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/queue-janitor ./cmd/queue-janitor

# The steps of `make test`, in order; CI (.ci/run) adds the demo and `make lint`.
TEST_STEPS := vet staticcheck test-race check-model-ci fuzz test-python nats-server-2.10 test-nats210

.PHONY: test
test: ## gofmt, vet, staticcheck, race tests, the model checker at CI bounds, short fuzz runs, the backend's Python tests, the server-behaviour tests on nats-server 2.10 (about 10 min cold on 2 cores)
	@start=$$SECONDS; n=0; total=$(words $(TEST_STEPS)); \
	for step in $(TEST_STEPS); do \
		n=$$((n + 1)); \
		printf '\n==> make test: step %d/%d: %s (at %ds)\n' $$n $$total $$step $$((SECONDS - start)); \
		$(MAKE) --no-print-directory $$step || { printf '\n==> make test: FAILED at step %d/%d: %s (after %ds)\n' $$n $$total $$step $$((SECONDS - start)); exit 1; }; \
	done; \
	printf '\n==> make test: all %d steps passed in %ds\n' $$total $$((SECONDS - start))

.PHONY: vet
vet: ## gofmt and go vet
	@unformatted="$$(gofmt -l .)"; if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)

.PHONY: staticcheck
staticcheck: ## staticcheck (version pinned in go.mod)
	$(GO) tool staticcheck $(PKGS)

.PHONY: test-race
test-race: ## all tests with the race detector
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

.PHONY: test-short
test-short: ## quick tests without the race detector
	$(GO) test -short -count=1 $(PKGS)

.PHONY: check-model-ci
check-model-ci: ## the exhaustive model check at CI bounds (under two minutes), with the states explored
	set -o pipefail; $(GO) test -count=1 -timeout 10m -run '^TestProtocolExhaustive$$' -v ./handlers/modelcheck/ | grep -E 'states|counterexample|^(---|ok|FAIL)'

.PHONY: check-model
check-model: ## the exhaustive model check at deeper bounds, and each guard disabled in the model (mutations); about half an hour on two cores
	$(GO) test -count=1 -timeout 120m -run '^(TestProtocolExhaustive|TestMutations)$$' -v ./handlers/modelcheck/ \
		-modelcheck.deep -modelcheck.mutants -modelcheck.maxstates=1000000

.PHONY: test-python
test-python: ## the backend's Python module (python3 >= 3.9): unit tests, and end to end with the real nats-py and queue-janitor serve
	@command -v python3 >/dev/null || { echo "make test-python needs python3 (3.9 or later) on PATH"; exit 1; }
	@# The end-to-end tests use an installed nats-py, else ../shared/third_party/nats-py-2.10.0 (the
	@# version Antenna pins), found from their own location; without either they are skipped, saying so.
	@# QJ_NATS_SERVER_BIN=<nats-server> runs them on that server instead of dev-nats (CI: 2.10.27);
	@# QJ_ANTENNA_REPO=<clone of RolnickLab/antenna> adds the tests with Antenna's own code at 731cc2a2.
	CGO_ENABLED=0 $(GO) build -o bin/queue-janitor-test ./cmd/queue-janitor
	cd deploy/backend && QJ_BIN=$(CURDIR)/bin/queue-janitor-test python3 -m unittest discover -v

# nats-server 2.10, the oldest release line the service supports (the backend
# deploys nats:2.10-alpine), built from source through the Go module proxy and
# pinned; every other test runs on the embedded 2.15 of go.mod.
NATS210_VERSION := v2.10.27
NATS210_BIN     := bin/nats210/nats-server

.PHONY: nats-server-2.10
nats-server-2.10: ## build nats-server 2.10.27 into bin/nats210/ (pinned; about 15 s cold)
	@GOBIN=$(CURDIR)/bin/nats210 $(GO) install github.com/nats-io/nats-server/v2@$(NATS210_VERSION) || \
		{ echo "make nats-server-2.10: FAILED to build nats-server $(NATS210_VERSION) (go install through the Go module proxy); test-nats210 cannot run without it"; exit 1; }
	@v="$$($(NATS210_BIN) --version 2>&1)"; case "$$v" in *"$(NATS210_VERSION)"*) echo "$(NATS210_BIN): $$v";; \
		*) echo "make nats-server-2.10: $(NATS210_BIN) reports '$$v', want $(NATS210_VERSION)"; exit 1;; esac

# The tests of test-nats210: those that exercise the server's behaviour on one
# node. queue/ and events/ (every test; their cluster test skips itself) and
# integration/natstest/ run whole; from integration/: lifecycle, cleanup,
# safety, clock, resurrect, partition, reconcile and its gaps, takeover,
# liveness, shutdown (mid burst), the random histories, the CLI golden
# output, doctor, the loss of the bucket and its records, and truthful answers. Left out: tests that start their server in-process
# whatever the mode (deploy configuration, auth, secrets, last delivery,
# embedded, observability, dashboard), clusters, the frozen-replica test (the
# service's own scheduling, 47 s), and TestOutageIsRiddenOut and
# TestSIGTERMWithEffectsStuck: both need a server stop to catch JetStream
# calls in flight, which 2.15.2 does (its shutdown after a burst takes about
# 1 s with clients still connected) and 2.10.27 does not (about 80 ms): their
# precondition fails on 2.10, not the service.
NATS210_PKGS  := ./queue/ ./events/ ./integration/natstest/
NATS210_TESTS := TestIncident TestDuplicateAndEmptyAreAnswered TestEventsWhileStoppedAreHandledAfterStart \
	TestInvalidEventIsDeadLettered TestTerminalStatusRemovesOnlyThatJob TestTerminalStatusesAreConfigurable \
	TestDuplicateRestartForSameAttempt TestLateTerminalAfterNewRun TestLateTerminalWithoutRecordIsFenced \
	TestOlderRestartAfterNewer TestRevokeAndRestartRace TestFutureDatedEventIsDeadLettered \
	TestLateTerminalFromAClockAheadIsStale TestRedeliveredRestartKeepsTheNewRun \
	TestRestartFlushesALeftoverCreatedJustBefore TestTerminalRightAfterCreationRemovesAtOnce \
	TestFlushedStreamDoesNotComeBack TestLostDeleteReplyIsReportedRemoved TestPartitionedDeleteNeverArrivesLate \
	TestDryRunChangesNothing TestOneSweeperAtATime TestOrphansAreReportedThenSweptWhenEnabled \
	TestReconcilerCleansStreamRecreatedAfterTheEnd TestReconcilerCleansWhatEventsMissed TestReconcilerIsObserved \
	TestOrphanWithAWorkerBusyIsKept TestReconcilerCleansADeadLetterConsumerLeftWithoutItsStream \
	TestKilledReplicaIsTakenOverInSeconds TestKilledSingleReplicaRestartsInSeconds TestServerDownMidStorm \
	TestReadOnlyCommandsCreateNothing TestReadyzAnswersAtOnceWhenNATSDown TestServeBindWaitsForDeletedEventStream \
	TestServeHealsAfterDeletions TestSIGTERMMidBurst TestRandomHistories TestCLIGolden TestDoctor.* \
	TestRecreatedBucketDoesNotLetTwoClaimsActOnOneJob TestLostRecordsAreRebuiltFromTheEventStream \
	TestRestartFlushFailedThenPendingIsStillFlushed TestStartRightAfterRevokedBringsNothingBack \
	TestPartlyFailedFirstAttemptIsReportedRemoved TestFrozenReplicasDeletionIsReportedByTheOneThatTakesOver \
	TestLostReplyToTheLastRecordWrite TestReconcilerNeverAnswersForAnEffectAlreadyDone TestSlowServerDoesNotChurnTheConnection
empty :=
space := $(empty) $(empty)

.PHONY: test-nats210
test-nats210: nats-server-2.10 ## the tests of the server's behaviour, and the backend's Python tests, against nats-server 2.10.27 (no -race)
	QJ_NATS_SERVER_BIN=$(CURDIR)/$(NATS210_BIN) $(GO) test -count=1 -timeout 20m $(NATS210_PKGS)
	QJ_NATS_SERVER_BIN=$(CURDIR)/$(NATS210_BIN) $(GO) test -count=1 -timeout 20m \
		-run '^($(subst $(space),|,$(strip $(NATS210_TESTS))))$$' ./integration/
	QJ_NATS_SERVER_BIN=$(CURDIR)/$(NATS210_BIN) $(MAKE) --no-print-directory test-python

.PHONY: fuzz
fuzz: ## run each fuzz target for FUZZTIME (default 40000x: executions, about 10 s each)
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./events/
	$(GO) test -run '^$$' -fuzz '^FuzzParseJobID$$' -fuzztime $(FUZZTIME) ./queue/

.PHONY: lint
lint: ## golangci-lint (pinned; the first run builds it, about ten minutes)
	$(GOLANGCI_LINT) run $(PKGS)

.PHONY: bench
bench: ## the benchmarks of docs/BENCHMARKS.md: the service and the floor interleaved on one server, and the sweep
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 90m ./integration/

.PHONY: clean
clean: ## remove build output
	rm -rf bin dist
