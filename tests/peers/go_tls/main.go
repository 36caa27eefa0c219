// An HTTPS server and client in one Go program, both on crypto/tls (the standard
// library only): TLS that no OpenSSL probe can see. The end-to-end tests build it at
// test time and check that its ciphertext gives no span, and that it is counted as
// undecrypted.
//
// Usage: go_tls -port P -cert PEM -key PEM -ca PEM [-n N] [-linger DURATION]
// Serves 127.0.0.1:P, makes N GETs to it (a new connection each), prints
// "ok N" when all were answered 200, waits -linger, and exits.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	port := flag.Int("port", 0, "port on 127.0.0.1")
	cert := flag.String("cert", "", "server certificate (PEM)")
	key := flag.String("key", "", "server key (PEM)")
	ca := flag.String("ca", "", "CA the client trusts (PEM)")
	n := flag.Int("n", 3, "requests")
	linger := flag.Duration("linger", time.Second, "wait before exiting")
	flag.Parse()

	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fail("listen: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "go %s\n", r.URL.Path)
	})}
	go func() { _ = srv.ServeTLS(ln, *cert, *key) }()

	pem, err := os.ReadFile(*ca)
	if err != nil {
		fail("read CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail("no certificate in %s", *ca)
	}
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool},
			DisableKeepAlives: true,
		},
	}
	for i := 0; i < *n; i++ {
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/go/%d", *port, i))
		if err != nil {
			fail("GET %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			fail("GET %d: status %d", i, resp.StatusCode)
		}
	}
	fmt.Printf("ok %d\n", *n)
	time.Sleep(*linger)
	_ = srv.Close()
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "go_tls: "+format+"\n", args...)
	os.Exit(1)
}
