package harness

import (
	"fmt"
	"os"
)

// BackendEnv selects the backend of the integration tests: "" or "process" (the default,
// ProcessBackend), or "containers" (ContainerBackend: a test binary built with
// `-tags containers` and a Docker engine).
const BackendEnv = "DPSYNC_BACKEND"

// Backend kinds BackendEnv accepts.
const (
	BackendProcess    = "process"
	BackendContainers = "containers"
)

// backendKind returns the backend BackendEnv's value v asks for.
func backendKind(v string) (string, error) {
	switch v {
	case "", BackendProcess:
		return BackendProcess, nil
	case BackendContainers:
		return BackendContainers, nil
	}
	return "", fmt.Errorf("%s=%q: want %q or %q", BackendEnv, v, BackendProcess, BackendContainers)
}

// NewBackend returns the backend DPSYNC_BACKEND selects. b builds the programs the process
// backend runs (and the worker the scenarios check for; the container backend builds its
// worker image from deploy/Dockerfile). Without the `containers` build tag,
// DPSYNC_BACKEND=containers is an error that says how to build it.
func NewBackend(b *Builder) (Backend, error) {
	kind, err := backendKind(os.Getenv(BackendEnv))
	if err != nil {
		return nil, err
	}
	if kind == BackendContainers {
		return newContainerBackend(b)
	}
	return &ProcessBackend{Builder: b}, nil
}
