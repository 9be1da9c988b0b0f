package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/dpsync/dpsync/internal/app"
	"github.com/dpsync/dpsync/internal/dps"
)

// cmdRegister registers a device through the DPS runtime API: the proof that an enrollment
// dpsync wrote really provisions.
func cmdRegister(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("worker register", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	endpoint := fs.String("endpoint", dps.GlobalDeviceEndpoint, "DPS device endpoint (the emulator's URL when testing)")
	idScope := fs.String("id-scope", "", "ID scope of the DPS instance (required)")
	regID := fs.String("registration-id", "", "registration id of the device (required)")
	keyFile := fs.String("device-key-file", "", "file with the device's symmetric key (or env DPSYNC_DEVICE_KEY)")
	groupKeyFile := fs.String("group-key-file", "", "file with the enrollment group's key: the device key is derived from it (or env DPSYNC_GROUP_KEY)")
	certFile := fs.String("cert", "", "X.509: device certificate (PEM); its CN is the registration id")
	certKey := fs.String("cert-key", "", "X.509: device private key (PEM)")
	caFile := fs.String("ca", "", "extra CA to trust (the emulator's certificate)")
	payload := fs.String("payload", "", "custom JSON payload for custom allocation")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after this long")
	poll := fs.Duration("poll-interval", dps.DefaultPollInterval, "wait between status polls when the service sends no Retry-After")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := applyEnv(fs, e.getenv); err != nil {
		fmt.Fprintf(e.stderr, "worker register: %v\n", err)
		return 2
	}
	if *idScope == "" || *regID == "" {
		fmt.Fprintln(e.stderr, "worker register: --id-scope and --registration-id are required")
		return 2
	}
	key, err := secretFrom(e.getenv, envPrefix+"DEVICE_KEY", *keyFile)
	if err != nil {
		fmt.Fprintf(e.stderr, "worker register: device key: %v\n", err)
		return 2
	}
	groupKey, err := secretFrom(e.getenv, envPrefix+"GROUP_KEY", *groupKeyFile)
	if err != nil {
		fmt.Fprintf(e.stderr, "worker register: group key: %v\n", err)
		return 2
	}
	if key == "" && groupKey != "" {
		if key, err = dps.DeriveDeviceKey(groupKey, *regID); err != nil {
			fmt.Fprintf(e.stderr, "worker register: derive device key: %v\n", err)
			return 2
		}
	}
	if key == "" && *certFile == "" {
		fmt.Fprintln(e.stderr, "worker register: give a symmetric key (DPSYNC_DEVICE_KEY, --device-key-file, a group key) or an X.509 certificate (--cert, --cert-key)")
		return 2
	}
	hc, err := deviceHTTPClient(*caFile, *certFile, *certKey)
	if err != nil {
		fmt.Fprintf(e.stderr, "worker register: %v\n", err)
		return 2
	}
	var p json.RawMessage
	if *payload != "" {
		if !json.Valid([]byte(*payload)) {
			fmt.Fprintln(e.stderr, "worker register: --payload is not valid JSON")
			return 2
		}
		p = json.RawMessage(*payload)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if *poll <= 0 {
		fmt.Fprintln(e.stderr, "worker register: --poll-interval must be positive")
		return 2
	}
	res, err := register(ctx, *endpoint, *idScope, *regID, key, p, hc, *poll)
	if res.RegistrationState != nil {
		st := res.RegistrationState
		fmt.Fprintf(e.stdout, "registration %s: status %s", *regID, res.Status)
		if st.AssignedHub != "" {
			fmt.Fprintf(e.stdout, ", hub %s, device %s, substatus %s", st.AssignedHub, st.DeviceID, st.Substatus)
		}
		fmt.Fprintln(e.stdout)
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "worker register: %v\n", err)
		return 1
	}
	return 0
}

func register(ctx context.Context, endpoint, idScope, regID, key string, payload json.RawMessage, hc *http.Client, poll time.Duration) (dps.RegisterResponse, error) {
	dc, err := dps.NewDeviceClient(endpoint, idScope, &dps.DeviceClientOptions{ClientOptions: azcore.ClientOptions{Transport: hc}, PollInterval: poll})
	if err != nil {
		return dps.RegisterResponse{}, err
	}
	return dc.Register(ctx, regID, &dps.RegisterOptions{SymmetricKey: key, Payload: payload})
}

func deviceHTTPClient(caFile, certFile, keyFile string) (*http.Client, error) {
	hc, err := app.HTTPClient(caFile)
	if err != nil {
		return nil, err
	}
	if certFile == "" {
		return hc, nil
	}
	if keyFile == "" {
		return nil, errors.New("--cert needs --cert-key")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("device certificate: %w", err)
	}
	tr := hc.Transport.(*http.Transport)
	if tr.TLSClientConfig == nil {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
	return hc, nil
}
