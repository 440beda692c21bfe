// Command go-control-plane-harness is the peer of the xDS fan-out benchmark
// (bench/src/bin/fanout.rs): github.com/envoyproxy/go-control-plane serving
// one ClusterLoadAssignment over ADS, state of the world and delta, to as many
// subscribers as the load generator opens.
//
// Configuration, and why. The go-control-plane README describes three caches:
// the snapshot-based Simple cache (a consistent set of every type per node
// group, for ADS servers that must order CDS before EDS), the Linear cache
// ("an eventually consistent cache for a single type URL collection", meant
// for supplying EDS uniformly across a fleet) and the Mux cache that combines
// them. This benchmark serves a single type (EDS) with identical content to
// every subscriber, which is exactly the Linear cache's use case, so the
// harness uses one LinearCache for the ClusterLoadAssignment type URL behind
// server.NewServer (SotW and delta share it). A SnapshotCache would need one
// snapshot per node id and would encode per node group; the Linear cache
// keeps one marshalled copy per resource version for every watch. The gRPC
// server raises MaxConcurrentStreams as go-control-plane's example server
// does, so many streams can share one HTTP/2 connection.
//
// Control endpoint (HTTP/1.1 on loopback, for the driver only):
//
//	POST /cla?name=<resource name>   body: a protobuf-encoded
//	                                 envoy.config.endpoint.v3.ClusterLoadAssignment;
//	                                 set as the resource's new version
//	GET  /ready                      200 once a resource is set, else 503
//
// It prints one line on stdout when both listeners are up,
// "xds=<addr> control=<addr>", and nothing per request. It is not a general
// control plane: no other types, no TLS, no persistence.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Streams per HTTP/2 connection the gRPC server allows; go-control-plane's
// example server uses the same figure (grpc-go's own default is lower).
const maxConcurrentStreams = 1000000

func main() {
	xdsAddr := flag.String("xds-addr", "127.0.0.1:0", "loopback address for the xDS (ADS) server")
	controlAddr := flag.String("control-addr", "127.0.0.1:0", "loopback address for the HTTP control endpoint")
	flag.Parse()
	if err := run(*xdsAddr, *controlAddr); err != nil {
		fmt.Fprintln(os.Stderr, "go-control-plane harness:", err)
		os.Exit(1)
	}
}

func run(xdsAddr, controlAddr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	linear := cache.NewLinearCache(resource.EndpointType)
	xds := server.NewServer(ctx, linear, nil)
	grpcServer := grpc.NewServer(grpc.MaxConcurrentStreams(maxConcurrentStreams))
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(grpcServer, xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(grpcServer, xds)

	xdsListener, err := net.Listen("tcp", xdsAddr)
	if err != nil {
		return fmt.Errorf("binding the xDS server to %s: %w", xdsAddr, err)
	}
	controlListener, err := net.Listen("tcp", controlAddr)
	if err != nil {
		return fmt.Errorf("binding the control endpoint to %s: %w", controlAddr, err)
	}

	var ready atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("POST /cla", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("name")
		if name == "" {
			http.Error(w, "missing ?name=", http.StatusBadRequest)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		cla := &endpoint.ClusterLoadAssignment{}
		if err := proto.Unmarshal(body, cla); err != nil {
			http.Error(w, "not a ClusterLoadAssignment: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := linear.UpdateResource(name, cla); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		ready.Store(true)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if ready.Load() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	control := &http.Server{Handler: mux}

	errs := make(chan error, 2)
	go func() { errs <- grpcServer.Serve(xdsListener) }()
	go func() { errs <- control.Serve(controlListener) }()
	fmt.Printf("xds=%s control=%s\n", xdsListener.Addr(), controlListener.Addr())

	select {
	case <-ctx.Done():
		grpcServer.Stop()
		_ = control.Close()
		return nil
	case err := <-errs:
		return err
	}
}
