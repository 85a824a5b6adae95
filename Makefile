# leafsync — the two commands a new user needs:
#   make demo   stack up, build, run worker + API, a short load, show the result
#   make test   stack up, every test (unit, integration against the real stack, deploy checks)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
STACK := scripts/stack
CARGO ?= cargo

.PHONY: demo test lint stack-up stack-down build deploy-check bench help

help:
	@sed -n '1,4p' Makefile

stack-up:
	$(STACK) up

stack-down:
	$(STACK) down

build:
	$(CARGO) build --release --workspace --bins

test: stack-up
	eval "$$($(STACK) env)"; $(CARGO) test --workspace --all-targets
	scripts/api-contract
	$(MAKE) --no-print-directory deploy-check

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

deploy-check:
	scripts/deploy-check

demo: stack-up build
	scripts/demo
