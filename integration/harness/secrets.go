package harness

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// secretPatterns match secrets whatever their value: a SAS signature, a connection
// string's key, a symmetric key in a JSON field.
var secretPatterns = []*regexp.Regexp{
	regexp.MustCompile(`sig=[A-Za-z0-9%+/=]{16,}`),
	regexp.MustCompile(`(?i)SharedAccessKey=[A-Za-z0-9+/=]{8,}`),
	regexp.MustCompile(`"(primaryKey|secondaryKey)"\s*:\s*"[A-Za-z0-9+/=]{16,}"`),
}

// ScanSecrets reports every line of the files that contains one of the given secret values
// or matches a secret pattern. The report names file, line and what matched, never the
// secret itself. Empty secrets are ignored.
func ScanSecrets(files []string, secrets ...string) ([]string, error) {
	var found []string
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", f, err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
		for line := 1; sc.Scan(); line++ {
			text := sc.Text()
			for i, s := range secrets {
				if s != "" && strings.Contains(text, s) {
					found = append(found, fmt.Sprintf("%s:%d: contains secret #%d", f, line, i))
				}
			}
			for _, re := range secretPatterns {
				if re.MatchString(text) {
					found = append(found, fmt.Sprintf("%s:%d: matches %s", f, line, re))
				}
			}
		}
		err = sc.Err()
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", f, err)
		}
	}
	return found, nil
}
