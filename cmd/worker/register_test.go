package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/emulator/emulatortest"
)

// registerCmd runs "worker register" with args against srv (endpoint, ID scope, CA and a
// short poll interval added) and returns the exit code, stdout and stderr.
func registerCmd(t *testing.T, srv *emulator.Server, environ map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	args = append([]string{"--endpoint", srv.URL(), "--id-scope", srv.IDScope(), "--ca", srv.CAFile(), "--poll-interval", "10ms", "--timeout", "30s"}, args...)
	code := cmdRegister(context.Background(), args, env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(k string) string { return environ[k] }})
	return code, out.String(), errb.String()
}

func writeSecret(t *testing.T, name, v string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, []byte(v+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestRegister registers devices through "worker register" against the emulator: with an
// individual enrollment's key, with a key derived from a group key file, with a key from
// the environment and with an X.509 certificate; and fails cleanly, printing no key.
func TestRegister(t *testing.T) {
	srv := emulatortest.New(t, emulator.Options{LinkedHubs: []string{"hub-a.azure-devices.net"}})
	c, err := dps.NewClientFromConnectionString(srv.ConnectionString(), &dps.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: srv.Client()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sym := func() *dps.AttestationMechanism {
		return &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{}}
	}
	en, err := c.CreateOrUpdateEnrollment(ctx, dps.IndividualEnrollment{RegistrationID: "solo-1", DeviceID: "solo-device", Attestation: sym()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	deviceKey := en.Attestation.SymmetricKey.PrimaryKey
	g, err := c.CreateOrUpdateEnrollmentGroup(ctx, dps.EnrollmentGroup{EnrollmentGroupID: "line-7", Attestation: sym()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	groupKey := g.Attestation.SymmetricKey.PrimaryKey
	deviceKeyFile := writeSecret(t, "device.key", deviceKey)
	groupKeyFile := writeSecret(t, "group.key", groupKey)

	tests := []struct {
		name    string
		environ map[string]string
		args    []string
		want    string
	}{
		{"individual key file", nil, []string{"--registration-id", "solo-1", "--device-key-file", deviceKeyFile},
			"registration solo-1: status assigned, hub hub-a.azure-devices.net, device solo-device, substatus initialAssignment\n"},
		{"again: the device data migrates", nil, []string{"--registration-id", "solo-1", "--device-key-file", deviceKeyFile},
			"registration solo-1: status assigned, hub hub-a.azure-devices.net, device solo-device, substatus deviceDataMigrated\n"},
		{"group key file", nil, []string{"--registration-id", "sensor-42", "--group-key-file", groupKeyFile},
			"registration sensor-42: status assigned, hub hub-a.azure-devices.net, device sensor-42, substatus initialAssignment\n"},
		{"device key from the environment", map[string]string{"DPSYNC_DEVICE_KEY": deviceKey}, []string{"--registration-id", "solo-1"},
			"registration solo-1: status assigned, hub hub-a.azure-devices.net, device solo-device, substatus deviceDataMigrated\n"},
		{"group key from the environment", map[string]string{"DPSYNC_GROUP_KEY": groupKey}, []string{"--registration-id", "sensor-43"},
			"registration sensor-43: status assigned, hub hub-a.azure-devices.net, device sensor-43, substatus initialAssignment\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := registerCmd(t, srv, tt.environ, tt.args...)
			if code != 0 || out != tt.want {
				t.Fatalf("got exit %d, stdout %q (stderr %q); want 0 and %q", code, out, errOut, tt.want)
			}
		})
	}
	// The registrations happened: the service API shows them.
	for id, hub := range map[string]string{"solo-1": "hub-a.azure-devices.net", "sensor-42": "hub-a.azure-devices.net"} {
		st, err := c.GetRegistrationState(ctx, id, nil)
		if err != nil || st.Status != dps.EnrollmentStatusAssigned || st.AssignedHub != hub {
			t.Errorf("registration state of %s: %+v, %v; want assigned to %s", id, st.DeviceRegistrationState, err, hub)
		}
	}

	t.Run("disabled enrollment", func(t *testing.T) {
		disabled := dps.ProvisioningStatusDisabled
		en, err := c.CreateOrUpdateEnrollment(ctx, dps.IndividualEnrollment{RegistrationID: "off-1", Attestation: sym(), ProvisioningStatus: &disabled}, nil)
		if err != nil {
			t.Fatal(err)
		}
		code, out, errOut := registerCmd(t, srv, map[string]string{"DPSYNC_DEVICE_KEY": en.Attestation.SymmetricKey.PrimaryKey}, "--registration-id", "off-1")
		if code != 1 || out != "registration off-1: status disabled\n" || !strings.Contains(errOut, "status disabled") {
			t.Errorf("got exit %d, stdout %q, stderr %q; want 1 and status disabled", code, out, errOut)
		}
	})

	// Failures exit 1 with the service's answer on stderr and never print a key.
	for _, tt := range []struct {
		name, id, keyFile, inErr string
	}{
		{"wrong key", "solo-1", groupKeyFile, "401"},
		{"unknown device", "nobody", deviceKeyFile, "404201"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := registerCmd(t, srv, nil, "--registration-id", tt.id, "--device-key-file", tt.keyFile)
			if code != 1 || out != "" || !strings.Contains(errOut, tt.inErr) {
				t.Errorf("got exit %d, stdout %q, stderr %q; want 1 and %s", code, out, errOut, tt.inErr)
			}
			if strings.Contains(out+errOut, deviceKey) || strings.Contains(out+errOut, groupKey) {
				t.Error("the output holds a key")
			}
		})
	}

	t.Run("bad flags", func(t *testing.T) {
		for _, args := range [][]string{
			{},                              // no registration id
			{"--registration-id", "solo-1"}, // no credentials
			{"--registration-id", "solo-1", "--cert", "c.pem"}, // --cert without --cert-key
			{"--registration-id", "solo-1", "--device-key-file", deviceKeyFile, "--payload", "{"},
			{"--registration-id", "solo-1", "--device-key-file", filepath.Join(t.TempDir(), "missing")},
		} {
			if code, _, errOut := registerCmd(t, srv, nil, args...); code != 2 {
				t.Errorf("%v: got exit %d (stderr %q), want 2", args, code, errOut)
			}
		}
	})

	t.Run("x509 certificate", func(t *testing.T) {
		certPEM, keyPEM := selfSignedDevice(t, "x509-dev")
		if _, err := c.CreateOrUpdateEnrollment(ctx, dps.IndividualEnrollment{RegistrationID: "x509-dev", Attestation: &dps.AttestationMechanism{
			Type: dps.AttestationTypeX509, X509: &dps.X509Attestation{ClientCertificates: &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: string(certPEM)}}},
		}}, nil); err != nil {
			t.Fatal(err)
		}
		code, out, errOut := registerCmd(t, srv, nil, "--registration-id", "x509-dev",
			"--cert", writeSecret(t, "dev.pem", string(certPEM)), "--cert-key", writeSecret(t, "dev.key", string(keyPEM)))
		if want := "registration x509-dev: status assigned, hub hub-a.azure-devices.net, device x509-dev, substatus initialAssignment\n"; code != 0 || out != want {
			t.Errorf("got exit %d, stdout %q (stderr %q); want 0 and %q", code, out, errOut, want)
		}
	})
}

// selfSignedDevice returns a self-signed client certificate with common name cn and its key
// (PEM).
func selfSignedDevice(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}
