package emulator

import (
	"crypto/hmac"
	"crypto/sha256"
	"net/url"
)

func hmacSHA256(key []byte, s string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s))
	return m.Sum(nil)
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }
