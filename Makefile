# segmentd: build, run, test and benchmark.
GO ?= go

.PHONY: all build run test test-embedded unit bench fmt vet clean

all: build

## build: segmentd and segmentctl into bin/
build:
	$(GO) build -o bin/segmentd ./cmd/segmentd
	$(GO) build -o bin/segmentctl ./cmd/segmentctl

## run: segmentd on the embedded default (in-process Kafka and Redis).
## Built with segmentctl (one build: they share their dependencies), then
## exec'd, so that Ctrl-C reaches segmentd itself, which shuts down in order
## (make, which gets the interrupt too, reports it as such).
run:
	@echo "building segmentd and segmentctl (a first build compiles their dependencies: ~40 s on 2 cores; later ones take a second)"
	$(GO) build -o bin/ ./cmd/segmentd ./cmd/segmentctl && exec bin/segmentd

## test: unit and integration tests with -race against real Kafka 4.x and Redis,
## which scripts/test-servers.sh starts on 127.0.0.1 and stops afterwards.
## A segmentd instance runs the jobs of every organisation it finds in Redis,
## so packages sharing a Redis would run each other's backfills and timers:
## they run one after another (-p 1), but for the processor's tests, the
## longest, which run beside them against a second Redis of their own
## (scripts/test-packages.sh).
test:
	scripts/test-servers.sh run -- env GO=$(GO) scripts/test-packages.sh

## test-embedded: the integration tests against the embedded stand-ins of
## `make run` (kfake and miniredis, in-process) instead of real servers;
## tests of what only a real server does skip, naming it. (OnEachRedis and
## OnEachKafka run their embedded subtests in `make test` and `make unit` too.)
test-embedded:
	SEGMENTD_TEST_STANDINS=1 $(GO) test -race -count=1 -p 1 -timeout 14m ./membership ./kafkaio ./api ./cmd/...

## unit: tests that need no servers (integration tests skip)
unit:
	$(GO) test -count=1 ./...

## bench: every benchmark of BENCHMARKS.md, against real servers
bench:
	scripts/test-servers.sh run -- scripts/bench.sh

fmt:
	gofmt -l -w .

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || (gofmt -l . && exit 1)

clean:
	rm -rf bin
