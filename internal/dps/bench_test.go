package dps

import (
	"context"
	"testing"
	"time"
)

func BenchmarkBuildSASToken(b *testing.B) {
	key := mustDecode(b, testKey)
	exp := time.Unix(1700000000, 0)
	for b.Loop() {
		_ = BuildSASToken("myprov.azure-devices-provisioning.net", "provisioningserviceowner", key, exp)
	}
}

// BenchmarkRunBulkOperation measures the client's own cost of a 10-item bulk call (pipeline,
// signing, encoding, decoding, span) against an in-process service.
func BenchmarkRunBulkOperation(b *testing.B) {
	f := &fake{replies: []reply{{status: 200, body: `{"errors":[{"registrationId":"dev-a","errorCode":409201,"errorStatus":"Enrollment already exists."}],"isSuccessful":false}`}}}
	cred, err := NewSharedAccessKeyCredential("provisioningserviceowner", testKey, nil)
	if err != nil {
		b.Fatal(err)
	}
	o := &ClientOptions{}
	o.Transport = handlerTransport{f}
	c, err := NewClientWithSharedKey("https://dps.test", cred, o)
	if err != nil {
		b.Fatal(err)
	}
	items := make([]IndividualEnrollment, 10)
	for i := range items {
		items[i] = symKeyEnrollment("dev-" + string(rune('a'+i)))
	}
	ctx := context.Background()
	for b.Loop() {
		f.mu.Lock()
		f.reqs = f.reqs[:0]
		f.mu.Unlock()
		if _, err := c.RunBulkOperation(ctx, BulkModeCreate, items, nil); err != nil {
			b.Fatal(err)
		}
	}
}
