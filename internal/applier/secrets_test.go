package applier

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/dps"
)

func selfSigned(t *testing.T, cn string) (pemText, sha256Hex string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), strings.ToUpper(hex.EncodeToString(sum[:]))
}

// TestCertificatesMatch: an X.509 attestation DPS holds matches the event's only when the
// certificates DPS computed its info from are the event's (by SHA-256 thumbprint).
func TestCertificatesMatch(t *testing.T) {
	mine, mineThumb := selfSigned(t, "dev-1")
	_, otherThumb := selfSigned(t, "dev-1")
	want := &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: mine}}
	held := func(thumb string) *dps.X509Certificates {
		return &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Info: &dps.X509CertificateInfo{SHA256Thumbprint: thumb}}}
	}
	for _, tc := range []struct {
		name string
		got  *dps.X509Certificates
		want bool
	}{
		{"same certificate", held(mineThumb), true},
		{"same certificate, lower-case thumbprint", held(strings.ToLower(mineThumb)), true},
		{"another certificate with the same subject", held(otherThumb), false},
		{"no certificate info", &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{}}, false},
		{"nothing held", nil, false},
	} {
		if got := certificatesMatch(want, tc.got); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	if !certificatesMatch(nil, held(otherThumb)) {
		t.Error("no certificate supplied: got mismatch, want match (nothing to compare)")
	}
}
