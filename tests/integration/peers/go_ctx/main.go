// A net/http server whose handler talks to Redis over pooled connections the
// way Go Redis clients do: each command is written from the handler's own
// goroutine, which parks while it waits for the answer and resumes on
// whichever thread the scheduler picks. GET /item/<id> runs SET, GET and DEL
// on the key item:<id>, so each Redis span names the request it belongs to.
// GET /fetch/<id> calls this server's /back/<id> with net/http's client, and
// GET /fetchs/<id> calls it over HTTPS (crypto/tls on both ends, a
// self-signed certificate made at start) on the second port, and GET
// /fetch2/<id> the same over HTTP/2. GET /fan/<id>
// does both from goroutines it starts, as errgroup-style handlers do: one
// runs SET, GET and DEL on fan:<id>, another starts a third that calls
// /back/<id>; the handler waits for them.
//
// Environment: GO_CTX_HOST, the address to listen on (127.0.0.1);
// GO_CTX_BACKEND, a base URL that /fetch/<path> fetches <path> from instead.
//
// Usage: go_ctx <listen port> <redis port> <https port>
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

type redisConn struct {
	c net.Conn
	r *bufio.Reader
}

// do sends one command in RESP and reads one reply (status, integer, error
// or bulk string).
func (rc *redisConn) do(args ...string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := rc.c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	line, err := rc.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "-"):
		return "", fmt.Errorf("redis: %s", line[1:])
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rc.r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return line, nil
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: go_ctx <listen port> <redis port> <https port>")
		os.Exit(2)
	}
	redisAddr := "127.0.0.1:" + os.Args[2] // dialed at the first /item
	pool := make(chan *redisConn, 64)
	get := func() (*redisConn, error) {
		select {
		case rc := <-pool:
			return rc, nil
		default:
			c, err := net.Dial("tcp", redisAddr)
			if err != nil {
				return nil, err
			}
			return &redisConn{c, bufio.NewReader(c)}, nil
		}
	}
	http.HandleFunc("/item/", func(w http.ResponseWriter, r *http.Request) {
		key := "item:" + strings.TrimPrefix(r.URL.Path, "/item/")
		rc, err := get()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		for _, cmd := range [][]string{{"SET", key, "v"}, {"GET", key}, {"DEL", key}} {
			if _, err := rc.do(cmd...); err != nil {
				rc.c.Close()
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		}
		pool <- rc
		fmt.Fprintf(w, "ok %s\n", key)
	})
	// GET /fetch/<id> calls GET /back/<id> on this server through net/http's
	// client: its transport writes the request from a connection's own writer
	// goroutine, not from the handler's.
	host := "127.0.0.1"
	if h := os.Getenv("GO_CTX_HOST"); h != "" {
		host = h
	}
	fetch := func(client *http.Client, base string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			id := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			resp, err := client.Get(base + "/" + id)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			fmt.Fprintf(w, "fetched %s: %d\n", id, resp.StatusCode)
		}
	}
	backend := "http://" + host + ":" + os.Args[1] + "/back"
	if b := os.Getenv("GO_CTX_BACKEND"); b != "" {
		backend = b
	}
	http.HandleFunc("/fetch/", fetch(http.DefaultClient, backend))
	// HTTP/1.1 over TLS: a Transport with its own TLS config does not try HTTP/2.
	insecure := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	http.HandleFunc("/fetchs/", fetch(insecure, "https://"+host+":"+os.Args[3]+"/back"))
	// HTTP/2 over TLS: one connection for every handler; each request's frames
	// are written by a goroutine the round trip starts.
	h2 := &http.Client{Transport: &http.Transport{ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	http.HandleFunc("/fetch2/", fetch(h2, "https://"+host+":"+os.Args[3]+"/back"))
	http.HandleFunc("/fan/", func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/fan/")
		errs := make(chan error, 2)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			rc, err := get()
			if err != nil {
				errs <- err
				return
			}
			key := "fan:" + id
			for _, cmd := range [][]string{{"SET", key, "v"}, {"GET", key}, {"DEL", key}} {
				if _, err := rc.do(cmd...); err != nil {
					rc.c.Close()
					errs <- err
					return
				}
			}
			pool <- rc
		}()
		go func() {
			defer wg.Done()
			done := make(chan error, 1)
			go func() {
				resp, err := http.Get(backend + "/" + id)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				done <- err
			}()
			if err := <-done; err != nil {
				errs <- err
			}
		}()
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "fanned out %s\n", id)
	})
	// GET /later/<id> starts a goroutine and answers at once; the goroutine
	// runs GET later:<id> only when GET /release/<id> (the next request on the
	// connection) lets it, and /release answers once it has.
	releases := make(chan chan struct{})
	http.HandleFunc("/later/", func(w http.ResponseWriter, r *http.Request) {
		key := "later:" + strings.TrimPrefix(r.URL.Path, "/later/")
		go func() {
			done := <-releases
			defer close(done)
			if rc, err := get(); err == nil {
				if _, err := rc.do("GET", key); err == nil {
					pool <- rc
				}
			}
		}()
		fmt.Fprintf(w, "started %s\n", key)
	})
	http.HandleFunc("/release/", func(w http.ResponseWriter, r *http.Request) {
		done := make(chan struct{})
		releases <- done
		<-done
		fmt.Fprintln(w, "released")
	})
	http.HandleFunc("/back/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "back %s\n", strings.TrimPrefix(r.URL.Path, "/back/"))
	})
	go func() {
		srv := &http.Server{Addr: host + ":" + os.Args[3],
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{selfSigned()}}}
		fmt.Fprintln(os.Stderr, srv.ListenAndServeTLS("", ""))
		os.Exit(1)
	}()
	if err := http.ListenAndServe(host+":"+os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
