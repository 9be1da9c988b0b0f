//go:build !containers

package harness

import (
	"errors"
	"fmt"
)

// ContainersBuilt reports whether this binary has the container backend (build tag
// `containers`).
const ContainersBuilt = false

// errContainersNotBuilt is NewBackend's answer to DPSYNC_BACKEND=containers in a binary
// built without the `containers` tag.
var errContainersNotBuilt = errors.New("the container backend is compiled only with the build tag `containers`: " +
	"go test -tags containers ./integration/... (and a Docker engine)")

func newContainerBackend(*Builder) (Backend, error) {
	return nil, fmt.Errorf("%s=%s: %w", BackendEnv, BackendContainers, errContainersNotBuilt)
}
