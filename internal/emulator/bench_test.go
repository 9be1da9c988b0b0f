package emulator_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/emulator/contract"
)

// BenchmarkBulkCreate measures enrollment items per second in bulk calls of 10 over
// loopback HTTP, quotas off, client and server in one process (the issue asks for
// ≥ 20,000 items/s on a 2-core machine). One iteration is one bulk call.
func BenchmarkBulkCreate(b *testing.B) {
	b.Run("memory", func(b *testing.B) { benchBulk(b, "") })
	b.Run("datadir", func(b *testing.B) { benchBulk(b, b.TempDir()) })
}

func benchBulk(b *testing.B, dir string) {
	em, err := emulator.New(emulator.Options{Quotas: &emulator.Quotas{}, DataDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(em.Handler())
	defer func() {
		srv.Close()
		if err := em.Close(); err != nil {
			b.Error(err)
		}
	}()
	p := em.Policies()[0]
	host := srv.Listener.Addr().String()
	auth := contract.SAS(host, p.Name, p.Key, time.Now().Add(time.Hour))
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	url := srv.URL + "/enrollments?api-version=2021-10-01"
	var next atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var buf bytes.Buffer
		for pb.Next() {
			n := next.Add(1)
			buf.Reset()
			buf.WriteString(`{"mode":"create","enrollments":[`)
			for i := range 10 {
				if i > 0 {
					buf.WriteByte(',')
				}
				fmt.Fprintf(&buf, `{"registrationId":"bench-%d-%d","attestation":{"type":"symmetricKey"},"provisioningStatus":"enabled","initialTwin":{"tags":{"site":"plant-7"}}}`, n, i)
			}
			buf.WriteString(`]}`)
			req, _ := http.NewRequest("POST", url, bytes.NewReader(buf.Bytes()))
			req.Header.Set("Authorization", auth)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != `{"errors":[],"isSuccessful":true}` {
				b.Errorf("bulk: got %d %s", resp.StatusCode, body)
				return
			}
		}
	})
	elapsed := time.Since(start)
	b.ReportMetric(float64(b.N*10)/elapsed.Seconds(), "items/s")
}
