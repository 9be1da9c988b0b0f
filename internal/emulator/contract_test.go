package emulator_test

import (
	"testing"

	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/emulator/contract"
	"github.com/dpsync/dpsync/internal/emulator/emulatortest"
)

func TestContract(t *testing.T) {
	s := emulatortest.New(t, emulator.Options{})
	contract.Run(t, emulatortest.Target(s))
}
