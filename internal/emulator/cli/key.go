package cli

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
)

func randomKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate policy key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}
