// A thin wrapper around Go's own net/http and crypto/tls, for the TLS tests:
// the agent must read the plaintext of a Go program, which links no OpenSSL.
//
//	go_tls server PORT CERT KEY
//	go_tls client [--http1] [--wait-stdin] URL...
//
// The server answers /missing* with 404, /big* with 300,000 bytes, anything
// else with a line naming the path. The client sends every URL over one
// keep-alive connection (HTTP/2 when the
// server offers it, unless --http1) and prints {"statuses": [...], "proto": ...}.
package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// The size of the /big* responses.
const bigBody = 300000

func serve(port, cert, key string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/missing") {
			http.NotFound(w, r)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/big") {
			// Many Write calls and TLS records, and a goroutine that may
			// park while the client reads.
			body := strings.Repeat("0123456789", bigBody/10)
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			io.WriteString(w, body)
			return
		}
		fmt.Fprintf(w, "hello from go: %s\n", r.URL.Path)
	})
	srv := &http.Server{Addr: "127.0.0.1:" + port, Handler: mux}
	if err := srv.ListenAndServeTLS(cert, key); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func client(args []string) {
	http1, wait := false, false
	var urls []string
	for _, a := range args {
		switch a {
		case "--http1":
			http1 = true
		case "--wait-stdin":
			wait = true
		default:
			urls = append(urls, a)
		}
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: !http1}
	if http1 {
		// An empty map turns HTTP/2 off (net/http's documented switch).
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	c := &http.Client{Transport: tr}
	if wait {
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	out := struct {
		Statuses []int  `json:"statuses"`
		Proto    string `json:"proto"`
	}{}
	for _, u := range urls {
		resp, err := c.Get(u)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		out.Statuses = append(out.Statuses, resp.StatusCode)
		out.Proto = resp.Proto
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

func main() {
	if len(os.Args) >= 5 && os.Args[1] == "server" {
		serve(os.Args[2], os.Args[3], os.Args[4])
		return
	}
	if len(os.Args) >= 3 && os.Args[1] == "client" {
		client(os.Args[2:])
		return
	}
	fmt.Fprintln(os.Stderr, "usage: go_tls server PORT CERT KEY | go_tls client [--http1] [--wait-stdin] URL...")
	os.Exit(2)
}
