package applier

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"strings"

	"github.com/dpsync/dpsync/internal/dps"
)

// secretsMatch reports whether DPS holds the secrets that want supplies, cur being what a
// GET returned (SameContent does not compare secrets: a GET returns no symmetric keys and no
// certificates). Supplied symmetric keys are read with one attestation-mechanism call;
// supplied X.509 certificates are compared by the SHA-256 thumbprints DPS computed. Keys DPS
// generated (none supplied) are nobody's to compare.
func (a *Applier) secretsMatch(ctx context.Context, want, cur Item) (bool, error) {
	att := attestationOf(want)
	if att == nil {
		return true, nil
	}
	if att.X509 != nil {
		var got *dps.X509Attestation
		if c := attestationOf(cur); c != nil {
			got = c.X509
		}
		if !certificatesMatch(att.X509.ClientCertificates, x509Client(got)) ||
			!certificatesMatch(att.X509.SigningCertificates, x509Signing(got)) {
			return false, nil
		}
	}
	sk := att.SymmetricKey
	if sk == nil || sk.PrimaryKey == "" && sk.SecondaryKey == "" {
		return true, nil
	}
	if err := a.before(ctx, "attestation"); err != nil {
		return false, err
	}
	held, err := a.dps.Attestation(ctx, want)
	a.after("attestation", 1, err)
	if err != nil {
		return false, err
	}
	if held == nil || held.SymmetricKey == nil {
		return false, nil
	}
	return (sk.PrimaryKey == "" || sk.PrimaryKey == held.SymmetricKey.PrimaryKey) &&
		(sk.SecondaryKey == "" || sk.SecondaryKey == held.SymmetricKey.SecondaryKey), nil
}

func attestationOf(it Item) *dps.AttestationMechanism {
	switch {
	case it.Kind == KindGroup && it.Group != nil:
		return it.Group.Attestation
	case it.Enrollment != nil:
		return it.Enrollment.Attestation
	}
	return nil
}

func x509Client(x *dps.X509Attestation) *dps.X509Certificates {
	if x == nil {
		return nil
	}
	return x.ClientCertificates
}

func x509Signing(x *dps.X509Attestation) *dps.X509Certificates {
	if x == nil {
		return nil
	}
	return x.SigningCertificates
}

// certificatesMatch reports whether the certificates DPS holds (got, with their computed
// info) are the ones want supplies as PEM.
func certificatesMatch(want, got *dps.X509Certificates) bool {
	if want == nil {
		return true
	}
	var gotPrimary, gotSecondary *dps.X509CertificateWithInfo
	if got != nil {
		gotPrimary, gotSecondary = got.Primary, got.Secondary
	}
	return certificateMatches(want.Primary, gotPrimary) && certificateMatches(want.Secondary, gotSecondary)
}

func certificateMatches(want, got *dps.X509CertificateWithInfo) bool {
	if want == nil || want.Certificate == "" {
		return true
	}
	thumb, ok := sha256Thumbprint(want.Certificate)
	return ok && got != nil && got.Info != nil && strings.EqualFold(got.Info.SHA256Thumbprint, thumb)
}

// sha256Thumbprint is the hex SHA-256 of the certificate's DER (what DPS reports).
func sha256Thumbprint(pemText string) (string, bool) {
	block, _ := pem.Decode([]byte(pemText))
	if block == nil {
		return "", false
	}
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		return "", false
	}
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:]), true
}
