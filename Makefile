# queue-janitor: the usual targets. `make help` lists them.
SHELL := /bin/bash
GO    ?= go
PKGS  := ./...
# Pinned tool versions (staticcheck is pinned in go.mod as a tool).
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
FUZZTIME ?= 10s
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/example/queue-janitor/cmd/queue-janitor/cli.Version=$(VERSION)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sort | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## replay the incident on an embedded NATS server (the one-command tour)
	$(GO) run ./cmd/queue-janitor demo

.PHONY: run
run: ## run the service on an embedded NATS server at 127.0.0.1:4222
	$(GO) run ./cmd/queue-janitor serve --embedded-nats

.PHONY: build
build: ## build a static binary into bin/ (the same flags as deploy/Dockerfile)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/queue-janitor ./cmd/queue-janitor

.PHONY: test
test: vet staticcheck test-race check-model-ci fuzz test-python ## everything CI checks: vet, staticcheck, race tests, the model checker at CI bounds, short fuzz runs, the backend module's tests

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
check-model: ## the exhaustive model check at deeper bounds, and each guard disabled in the model (mutations); about an hour
	$(GO) test -count=1 -timeout 120m -run '^(TestProtocolExhaustive|TestMutations)$$' -v ./handlers/modelcheck/ \
		-modelcheck.deep -modelcheck.mutants -modelcheck.maxstates=1000000

.PHONY: test-python
test-python: ## the backend's Python module (standard library only)
	cd deploy/backend && python3 -m unittest discover

.PHONY: fuzz
fuzz: ## run each fuzz target for FUZZTIME (default 10s)
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./events/
	$(GO) test -run '^$$' -fuzz '^FuzzParseJobID$$' -fuzztime $(FUZZTIME) ./queue/

.PHONY: lint
lint: ## golangci-lint (pinned; the first run builds it, about ten minutes)
	$(GOLANGCI_LINT) run $(PKGS)

.PHONY: bench
bench: ## the side-by-side benchmarks of BENCHMARKS.md
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 60m ./integration/

.PHONY: clean
clean: ## remove build output
	rm -rf bin dist
