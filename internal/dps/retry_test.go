package dps

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

func TestRetries(t *testing.T) {
	bulkOK := reply{status: 200, body: `{"errors":[],"isSuccessful":true}`}
	tests := []struct {
		name        string
		replies     []reply
		retry       policy.RetryOptions
		wantReqs    int
		wantErr     bool
		wantStatus  int
		wantElapsed time.Duration // exact, on the fake clock; -1: only > 0
	}{
		{
			name:     "429 with Retry-After longer than azcore's 60 s cap is honoured",
			replies:  []reply{{status: 429, header: map[string]string{"Retry-After": "120"}, body: `{"errorCode":429001,"message":"Throttled"}`}, bulkOK},
			wantReqs: 2, wantElapsed: 120 * time.Second,
		},
		{
			name:     "503 then 500 without Retry-After back off and succeed",
			replies:  []reply{{status: 503}, {status: 500, body: `{"errorCode":500000}`}, bulkOK},
			wantReqs: 3, wantElapsed: -1,
		},
		{
			name:     "408, 502, 504 are retried",
			replies:  []reply{{status: 408}, {status: 502}, {status: 504}, bulkOK},
			wantReqs: 4, wantElapsed: -1,
		},
		{
			name:     "409 is not retried",
			replies:  []reply{{status: 409, body: `{"errorCode":409201}`}, bulkOK},
			wantReqs: 1, wantErr: true, wantStatus: 409,
		},
		{
			name:     "400 is not retried",
			replies:  []reply{{status: 400, body: `{"errorCode":400000}`}, bulkOK},
			wantReqs: 1, wantErr: true, wantStatus: 400,
		},
		{
			name:     "412 is not retried",
			replies:  []reply{{status: 412, body: `{"errorCode":412002,"message":"Precondition failed."}`}, bulkOK},
			wantReqs: 1, wantErr: true, wantStatus: 412,
		},
		{
			name:     "401 is not retried",
			replies:  []reply{{status: 401, body: `{"errorCode":401002}`}, bulkOK},
			wantReqs: 1, wantErr: true, wantStatus: 401,
		},
		{
			name:     "Retry-After beyond MaxRetryDelay returns the 429",
			replies:  []reply{{status: 429, header: map[string]string{"Retry-After": "600"}}, bulkOK},
			wantReqs: 1, wantErr: true, wantStatus: 429,
		},
		{
			name:     "MaxRetries bounds the tries",
			replies:  []reply{{status: 503}},
			retry:    policy.RetryOptions{MaxRetries: 2},
			wantReqs: 3, wantErr: true, wantStatus: 503, wantElapsed: -1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := &fake{replies: tt.replies}
				c := newInProcessClient(t, f, &ClientOptions{ClientOptions: policy.ClientOptions{Retry: tt.retry}})
				start := time.Now()
				_, err := c.RunBulkOperation(context.Background(), BulkModeCreate, []IndividualEnrollment{symKeyEnrollment("a")}, nil)
				elapsed := time.Since(start)
				if (err != nil) != tt.wantErr {
					t.Fatalf("got error %v, want error %v", err, tt.wantErr)
				}
				if tt.wantErr {
					if got := StatusCode(err); got != tt.wantStatus {
						t.Errorf("status: got %d, want %d", got, tt.wantStatus)
					}
				}
				reqs := f.requests()
				if len(reqs) != tt.wantReqs {
					t.Errorf("requests: got %d, want %d", len(reqs), tt.wantReqs)
				}
				switch {
				case tt.wantElapsed > 0 && elapsed != tt.wantElapsed:
					t.Errorf("elapsed: got %s, want %s", elapsed, tt.wantElapsed)
				case tt.wantElapsed < 0 && elapsed <= 0:
					t.Errorf("elapsed: got %s, want a backoff", elapsed)
				case tt.wantElapsed == 0 && elapsed != 0:
					t.Errorf("elapsed: got %s, want no wait", elapsed)
				}
				// Every try is signed afresh: the expiry moves with the clock, the body is the same.
				for i := 1; i < len(reqs); i++ {
					if string(reqs[i].Body) != string(reqs[0].Body) {
						t.Errorf("try %d body differs: %s vs %s", i, reqs[i].Body, reqs[0].Body)
					}
				}
				if tt.wantElapsed > 0 && len(reqs) == 2 {
					se0 := verifySAS(t, reqs[0].Header.Get("Authorization"), "dps.test", "provisioningserviceowner", testKey)
					se1 := verifySAS(t, reqs[1].Header.Get("Authorization"), "dps.test", "provisioningserviceowner", testKey)
					if got := se1.Sub(se0); got != tt.wantElapsed {
						t.Errorf("token expiry moved by %s, want %s (a fresh token per try)", got, tt.wantElapsed)
					}
				}
			})
		})
	}
}

// flakyTransport fails the first n requests with a connection reset.
type flakyTransport struct {
	n    atomic.Int32
	next policy.Transporter
}

func (f *flakyTransport) Do(req *http.Request) (*http.Response, error) {
	if f.n.Add(-1) >= 0 {
		return nil, &netOpError{}
	}
	return f.next.Do(req)
}

type netOpError struct{}

func (*netOpError) Error() string {
	return "read tcp 127.0.0.1:1->127.0.0.1:2: connection reset by peer"
}
func (*netOpError) Unwrap() error   { return syscall.ECONNRESET }
func (*netOpError) Timeout() bool   { return false }
func (*netOpError) Temporary() bool { return false }

func TestTransportErrorsAreRetriedThenTransient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fake{replies: []reply{{status: 200, body: `{"registrationId":"a","attestation":{"type":"symmetricKey"}}`}}}
		ft := &flakyTransport{next: handlerTransport{f}}
		ft.n.Store(2)
		cred, _ := NewSharedAccessKeyCredential("provisioningserviceowner", testKey, nil)
		c, err := NewClientWithSharedKey("https://dps.test", cred, &ClientOptions{ClientOptions: policy.ClientOptions{Transport: ft}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetEnrollment(context.Background(), "a", nil); err != nil {
			t.Fatalf("after 2 resets: got %v, want success", err)
		}

		ft.n.Store(100)
		_, err = c.GetEnrollment(context.Background(), "a", nil)
		if err == nil {
			t.Fatal("always reset: got nil error")
		}
		if !IsTransient(err) {
			t.Errorf("IsTransient(%v): got false, want true", err)
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("got %v, want it to wrap ECONNRESET", err)
		}
	})
}

func TestContextCancelIsNotTransient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fake{replies: []reply{{status: 503}}}
		c := newInProcessClient(t, f, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		_, err := c.GetEnrollment(ctx, "a", nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
		ctx2, cancel2 := context.WithCancel(context.Background())
		cancel2()
		_, err = c.GetEnrollment(ctx2, "a", nil)
		if !errors.Is(err, context.Canceled) || IsTransient(err) {
			t.Errorf("cancelled: got %v (transient %v), want Canceled, not transient", err, IsTransient(err))
		}
	})
}

func TestSharedKeyRefusesPlainHTTP(t *testing.T) {
	cred, _ := NewSharedAccessKeyCredential("provisioningserviceowner", testKey, nil)
	f := &fake{replies: []reply{{status: 200, body: `{"registrationId":"a"}`}}}
	c, err := NewClientWithSharedKey("http://dps.test", cred, &ClientOptions{ClientOptions: policy.ClientOptions{Transport: handlerTransport{f}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetEnrollment(context.Background(), "a", nil); err == nil {
		t.Error("http without InsecureAllowCredentialWithHTTP: got nil error")
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("got %d requests, want 0 (and no retries)", n)
	}
	c, err = NewClientWithSharedKey("http://dps.test", cred, &ClientOptions{ClientOptions: policy.ClientOptions{Transport: handlerTransport{f}, InsecureAllowCredentialWithHTTP: true}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetEnrollment(context.Background(), "a", nil); err != nil {
		t.Errorf("http with InsecureAllowCredentialWithHTTP: got %v", err)
	}
}
