package dps

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// testKey is a made-up base64 key (38 bytes). The expected tokens below were computed with an
// independent implementation (Python hmac/base64/urllib.parse.quote).
const testKey = "dGhpcyBpcyBhIDMyIGJ5dGUgdGVzdCBrZXkgZm9yIHNhcyEhISE="

func TestBuildSASTokenKnownAnswers(t *testing.T) {
	key := mustDecode(t, testKey)
	tests := []struct {
		name     string
		resource string
		keyName  string
		expiry   time.Time
		want     string
	}{
		{
			name:     "service host",
			resource: "myprov.azure-devices-provisioning.net",
			keyName:  "provisioningserviceowner",
			expiry:   time.Unix(1700000000, 0),
			want:     "SharedAccessSignature sr=myprov.azure-devices-provisioning.net&sig=sR3xTDkQdMDO4xwZKzAeR8OLqiAoiF3UXtylJKZhuvw%3D&se=1700000000&skn=provisioningserviceowner",
		},
		{
			name:     "service host with port",
			resource: "127.0.0.1:8443",
			keyName:  "provisioningserviceowner",
			expiry:   time.Unix(1700000000, 0),
			want:     "SharedAccessSignature sr=127.0.0.1%3A8443&sig=DduUHIX9xl6X2ZNWszz92dXyjZHNs8TqJL6nthE94Jg%3D&se=1700000000&skn=provisioningserviceowner",
		},
		{
			name:     "device registration",
			resource: "0ne00111111/registrations/my-symkey-device",
			keyName:  "registration",
			expiry:   time.Unix(1663952627, 0),
			want:     "SharedAccessSignature sr=0ne00111111%2Fregistrations%2Fmy-symkey-device&sig=piZxUr94aWQfOOaM0l5rcagM0uIBZGl992mo%2BVlOBzA%3D&se=1663952627&skn=registration",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := BuildSASToken(tt.resource, tt.keyName, key, tt.expiry); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestBuildDeviceSASTokenKnownAnswer(t *testing.T) {
	got, err := BuildDeviceSASToken("0ne00111111", "my-symkey-device", testKey, time.Unix(1663952627, 0))
	if err != nil {
		t.Fatal(err)
	}
	const want = "SharedAccessSignature sr=0ne00111111%2Fregistrations%2Fmy-symkey-device&sig=piZxUr94aWQfOOaM0l5rcagM0uIBZGl992mo%2BVlOBzA%3D&se=1663952627&skn=registration"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if _, err := BuildDeviceSASToken("s", "r", "not base64!", time.Unix(0, 0)); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("bad key: got %v, want ErrInvalidKey", err)
	}
}

func TestCredentialTokenLowerCasesHostAndUsesLifetime(t *testing.T) {
	cred, err := NewSharedAccessKeyCredential("provisioningserviceowner", testKey, &SharedAccessKeyCredentialOptions{TokenLifetime: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1700000000, 0).Add(-10 * time.Minute)
	got := cred.Token("MyProv.Azure-Devices-Provisioning.NET", now)
	const want = "SharedAccessSignature sr=myprov.azure-devices-provisioning.net&sig=sR3xTDkQdMDO4xwZKzAeR8OLqiAoiF3UXtylJKZhuvw%3D&se=1700000000&skn=provisioningserviceowner"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if got := cred.TokenLifetime(); got != 10*time.Minute {
		t.Errorf("TokenLifetime() = %s, want 10m", got)
	}
}

func TestDeriveDeviceKeyKnownAnswer(t *testing.T) {
	// Microsoft's documented vector (DPS.md).
	got, err := DeriveDeviceKey("8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==", "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6")
	if err != nil {
		t.Fatal(err)
	}
	if want := "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	for _, bad := range []string{"", "%%%%", "c2VjcmV0LWdyb3VwLWtleQ"} {
		_, err := DeriveDeviceKey(bad, "dev")
		if err == nil {
			t.Errorf("DeriveDeviceKey(%q): got nil error, want one", bad)
			continue
		}
		if bad != "" && strings.Contains(err.Error(), bad) {
			t.Errorf("error %q quotes the key", err)
		}
	}
}

func TestParseConnectionString(t *testing.T) {
	tests := []struct {
		name         string
		in           string
		wantEndpoint string
		wantKeyName  string
		wantErr      string // substring; "" means success
	}{
		{"canonical", "HostName=myprov.azure-devices-provisioning.net;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + testKey,
			"https://myprov.azure-devices-provisioning.net", "provisioningserviceowner", ""},
		{"any order, any case, spaces, trailing ;", " sharedaccesskey=" + testKey + " ; HOSTNAME=127.0.0.1:8443;SharedAccessKeyName=owner;",
			"https://127.0.0.1:8443", "owner", ""},
		{"empty", "", "", "", "HostName is missing"},
		{"no host", "SharedAccessKeyName=a;SharedAccessKey=" + testKey, "", "", "HostName is missing"},
		{"no key name", "HostName=h;SharedAccessKey=" + testKey, "", "", "SharedAccessKeyName is missing"},
		{"no key", "HostName=h;SharedAccessKeyName=a", "", "", "SharedAccessKey is missing"},
		{"empty key", "HostName=h;SharedAccessKeyName=a;SharedAccessKey=", "", "", "SharedAccessKey is missing"},
		{"key not base64", "HostName=h;SharedAccessKeyName=a;SharedAccessKey=not*base64*at*all", "", "", "not valid base64"},
		{"segment without =", "HostName=h;SharedAccessKeyName=a;SharedAccessKey=" + testKey + ";junk", "", "", "no '='"},
		{"key pasted alone", "HostName=h;SharedAccessKeyName=a;" + testKey, "", "", "not a known Name=value setting"},
		{"key without padding pasted alone", "HostName=h;SharedAccessKeyName=a;SharedAccessKey=x;dGhpcyBpcyBhIDMyIGJ5dGUgdGVzdCBrZXk=", "", "", "not a known Name=value setting"},
		{"unknown setting", "HostName=h;SharedAccessKeyName=a;SharedAccessKey=" + testKey + ";DeviceId=d", "", "", `unknown setting "DeviceId"`},
		{"scheme in host", "HostName=https://h;SharedAccessKeyName=a;SharedAccessKey=" + testKey, "", "", "without scheme"},
		{"path in host", "HostName=h/x;SharedAccessKeyName=a;SharedAccessKey=" + testKey, "", "", "without scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep, cred, err := ParseConnectionString(tt.in, nil)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("got nil error, want %q", tt.wantErr)
				}
				if !errors.Is(err, ErrConnectionString) {
					t.Errorf("got %v, want it to wrap ErrConnectionString", err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("got %q, want it to contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), strings.TrimRight(testKey, "=")) || strings.Contains(err.Error(), "dGhpcyBp") || strings.Contains(err.Error(), "not*base64") {
					t.Errorf("error %q leaks the key", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ep != tt.wantEndpoint {
				t.Errorf("endpoint: got %q, want %q", ep, tt.wantEndpoint)
			}
			if cred.KeyName() != tt.wantKeyName {
				t.Errorf("key name: got %q, want %q", cred.KeyName(), tt.wantKeyName)
			}
		})
	}
}

func TestCredentialNeverPrintsKey(t *testing.T) {
	cred, err := NewSharedAccessKeyCredential("owner", testKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw := string(mustDecode(t, testKey))
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		s := fmt.Sprintf(verb, cred)
		if strings.Contains(s, testKey) || strings.Contains(s, raw) {
			t.Errorf("%s prints the key: %s", verb, s)
		}
		if !strings.Contains(s, "owner") {
			t.Errorf("%s = %s, want it to name the key", verb, s)
		}
	}
	if err := cred.SetKey("!!"); err == nil || strings.Contains(err.Error(), "!!") {
		t.Errorf("SetKey(bad): got %v, want an error that does not quote the key", err)
	}
	if _, err := NewSharedAccessKeyCredential("", testKey, nil); err == nil {
		t.Error("empty key name: got nil error")
	}
	if _, err := NewSharedAccessKeyCredential("a", testKey, &SharedAccessKeyCredentialOptions{TokenLifetime: -time.Second}); err == nil {
		t.Error("negative lifetime: got nil error")
	}
}
