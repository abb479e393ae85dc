// gRPC-Go over TLS, for the TLS tests: grpc-go's own HTTP/2 over Go's
// crypto/tls (no OpenSSL, no net/http). The service is gRPC's standard
// health service, so no generated code of ours is needed.
//
//	go_grpc_tls server PORT CERT KEY
//	go_grpc_tls client [--wait-stdin] ADDR SERVICE...
//
// The server knows the service "known" (SERVING); the client calls Check
// once per SERVICE on one connection and prints {"codes": [...]}, the gRPC
// status code of each call (an unknown service is NOT_FOUND, 5). SERVICE
// "big" asks for an unknown service with a 300 KB name: a request message
// spread over many DATA frames and TLS writes.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func serve(port, cert, key string) {
	creds, err := credentials.NewServerTLSFromFile(cert, key)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := grpc.NewServer(grpc.Creds(creds))
	h := health.NewServer()
	h.SetServingStatus("known", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, h)
	if err := s.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func client(args []string) {
	wait := len(args) > 0 && args[0] == "--wait-stdin"
	if wait {
		args = args[1:]
	}
	if wait {
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	creds := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, args[0], grpc.WithTransportCredentials(creds), grpc.WithBlock())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	c := healthpb.NewHealthClient(conn)
	out := struct {
		Codes []int `json:"codes"`
	}{}
	for _, svc := range args[1:] {
		if svc == "big" {
			svc = strings.Repeat("x", 300000)
		}
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		out.Codes = append(out.Codes, int(status.Code(err)))
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

func main() {
	if len(os.Args) >= 5 && os.Args[1] == "server" {
		serve(os.Args[2], os.Args[3], os.Args[4])
		return
	}
	if len(os.Args) >= 4 && os.Args[1] == "client" {
		client(os.Args[2:])
		return
	}
	fmt.Fprintln(os.Stderr, "usage: go_grpc_tls server PORT CERT KEY | go_grpc_tls client [--wait-stdin] ADDR SERVICE...")
	os.Exit(2)
}
