package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestScanSecrets(t *testing.T) {
	const key = "c2VjcmV0LWtleS1ub2JvZHktc2hvdWxkLXNlZQ=="
	tests := []struct {
		name string
		line string
		want bool
	}{
		{"clean", `{"msg":"applied batch","items":10}`, false},
		{"redacted signature", `Authorization: SharedAccessSignature sr=host&sig=REDACTED&se=1`, false},
		{"raw key", `{"msg":"oops","k":"` + key + `"}`, true},
		{"signature", `sr=h&sig=AbCdEfGhIjKlMnOpQrStUvWx%2Bz%3D&se=1&skn=x`, true},
		{"connection string", `HostName=h;SharedAccessKeyName=p;SharedAccessKey=QUJDREVGR0g=`, true},
		{"symmetric key field", `{"primaryKey":"QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "log")
			if err := os.WriteFile(f, []byte("first line\n"+tt.line+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			found, err := ScanSecrets([]string{f}, key, "")
			if err != nil {
				t.Fatal(err)
			}
			if got := len(found) > 0; got != tt.want {
				t.Errorf("got findings %v, want found = %v", found, tt.want)
			}
			for _, s := range found {
				if strings.Contains(s, key) || !strings.Contains(s, ":2:") {
					t.Errorf("got finding %q, want file:2 without the secret", s)
				}
			}
		})
	}
}
