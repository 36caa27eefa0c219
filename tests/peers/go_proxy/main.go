// A legacy (uninstrumented) Go reverse proxy for the linking fidelity test, the standard
// library only: net/http serves 127.0.0.1:PORT and httputil.NewSingleHostReverseProxy
// forwards every request to http://127.0.0.1:UPSTREAM. Go runs each connection in a
// goroutine that the runtime moves between OS threads, and the Transport pools idle
// upstream keep-alive connections, so neither "same thread" nor "new connection per
// request" holds: the hand-off model of issue 9.
//
// What it forwards is what ReverseProxy does by itself: the client's method, path and
// end-to-end headers (so a traceparent the client sent IS forwarded), with
// X-Forwarded-For set to the client's address and hop-by-hop headers removed. It relays
// the upstream's status, headers and body; 502 when the upstream fails.
//
// Usage: go_proxy -port PORT -upstream-port U [-max-idle N]
//
//	-max-idle  idle upstream connections kept (default 64; Go's own default is 2,
//	           which opens a new connection for most requests beyond 2 in flight)
//
// Bounds: 512 client connections at a time (accept waits beyond that), 64 upstream
// connections, 10 s for the upstream's response head, 30 s per client request head,
// 60 s idle keep-alive, 64 KiB of request head. Prints "ready PORT" on stdout once it
// accepts connections; SIGTERM/SIGINT stop it.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

const maxClients = 512

func main() {
	port := flag.Int("port", 0, "port to serve on 127.0.0.1")
	upPort := flag.Int("upstream-port", 0, "upstream port on 127.0.0.1")
	maxIdle := flag.Int("max-idle", 64, "idle upstream keep-alive connections kept")
	flag.Parse()
	if *port <= 0 || *upPort <= 0 || flag.NArg() != 0 {
		fail("usage: go_proxy -port PORT -upstream-port U [-max-idle N]")
	}

	target := &url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", *upPort)}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{
		Proxy:                 nil, // never an environment proxy: loopback only
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          *maxIdle,
		MaxIdleConnsPerHost:   *maxIdle,
		MaxConnsPerHost:       64,
		IdleConnTimeout:       60 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
	}
	proxy.ErrorLog = log.New(os.Stderr, "go_proxy: ", 0)

	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fail("listen: %v", err)
	}
	srv := &http.Server{
		Handler:           proxy,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          proxy.ErrorLog,
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		_ = srv.Close()
	}()
	fmt.Printf("ready %d\n", *port)
	_ = os.Stdout.Sync()
	if err := srv.Serve(&limitListener{Listener: ln, slots: make(chan struct{}, maxClients)}); err != nil && err != http.ErrServerClosed {
		fail("serve: %v", err)
	}
}

// limitListener holds at most cap(slots) accepted connections open at a time: Accept
// waits for a slot, Close of a connection frees it (the standard library has no such
// listener; golang.org/x/net/netutil's is the model).
type limitListener struct {
	net.Listener
	slots chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.slots <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "go_proxy: "+format+"\n", args...)
	os.Exit(1)
}
