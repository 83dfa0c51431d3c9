# Scope — developer entry points. `make help` lists them.
GO        ?= go
BIN       := ./bin/scope
PKGS      := ./...
# CI machines have 2 cores; the race detector makes tests ~5x slower, so the
# timeout is generous. Long soak/chaos variants run with `make soak`.
TEST_FLAGS ?= -race -count=1 -timeout 30m
BENCH     ?= .
BENCHTIME ?= 1s

.PHONY: help build run test soak chaos bench generate checkgenerate breaking lint clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build ./bin/scope
	$(GO) build -o $(BIN) ./cmd/scope

run: build ## start a one-node dev cluster on 127.0.0.1:7070
	$(BIN) agent -dev

# The nemesis campaign (cluster/chaos) runs four agent processes: it runs
# after the rest, alone, so that neither slows the other's timing-bound
# tests on a 2-core machine.
test: ## the whole test suite with -race (what CI runs); the nemesis campaign last, alone
	$(GO) test $(TEST_FLAGS) $$($(GO) list $(PKGS) | grep -v '/cluster/chaos$$')
	$(GO) test $(TEST_FLAGS) ./cluster/chaos/

soak: ## long fault-injection and stress variants
	SCOPE_SOAK=1 $(GO) test -race -count=1 -timeout 60m $(PKGS)

# A long nemesis campaign (cluster/chaos): DURATION of faults, SEED fixes the
# schedule. Network namespaces need root and iproute2; NET=loopback runs
# without partitions. `make test` runs a short campaign (TestCampaign).
DURATION ?= 30m
SEED     ?= 1
NET      ?= netns
chaos: build ## long fault-injection campaign (DURATION=30m SEED=1 NET=netns), checked with porcupine
	$(BIN) chaos -duration $(DURATION) -seed $(SEED) -net $(NET) -json chaos-report.json

bench: ## Go benchmarks (BENCH=regexp, BENCHTIME=1s)
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchmem -benchtime $(BENCHTIME) $(PKGS)

generate: ## regenerate protobuf/Connect code (builds buf from tools/ on first use, ~6 min cold)
	@# buf is pinned by the separate tools module; the plugins by this module's
	@# `tool` lines. `go build` is a no-op link-check when nothing changed.
	cd tools && $(GO) build -o ../bin/buf github.com/bufbuild/buf/cmd/buf
	$(GO) build -o ./bin/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) build -o ./bin/protoc-gen-connect-go connectrpc.com/connect/cmd/protoc-gen-connect-go
	cd rpc && ../bin/buf format --diff --exit-code
	cd rpc && ../bin/buf lint
	@# PATH: buf.gen.yaml names local plugins; the ones just built must win
	@# over any other protoc-gen-go on the machine.
	cd rpc && PATH="$(CURDIR)/bin:$$PATH" ../bin/buf generate

checkgenerate: generate ## fail if generated code differs from what is committed
	@# Only rpc/gen: other rpc/ files are hand-written. --untracked-files=all
	@# reports new generated files one by one; deleted ones show as " D".
	@out=$$(git status --porcelain --untracked-files=all -- rpc/gen); \
		test -z "$$out" || { echo "generated code is out of date (run make generate and commit):"; \
		echo "$$out"; git --no-pager diff --stat -- rpc/gen; exit 1; }

breaking: generate ## fail if the API breaks compatibility with main's (buf breaking, FILE rules)
	cd rpc && ../bin/buf breaking --against '../.git#branch=main,subdir=rpc'

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); test -z "$$out" || { echo "gofmt:"; echo "$$out"; exit 1; }
	$(GO) vet $(PKGS)

clean: ## remove build outputs
	rm -rf ./bin
