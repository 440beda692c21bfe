// Command client is a stock grpc-go xDS client for eds-server's interop
// tests: it dials xds:///<target> (the bootstrap comes from
// GRPC_XDS_BOOTSTRAP, as for any proxyless gRPC application), calls
// eds.echo.v1.Echo/Echo -n times, one at a time, and prints one line of
// JSON: how many replies came from each pod and zone, and the errors.
//
// The echo messages are encoded by hand with protowire (two tiny messages,
// see proto/proto/echo.proto), so the program needs no generated code and no
// protoc. Balancing is entirely grpc-go's own: its xDS resolver and the
// cluster, priority and endpoint-picking policies eds-server configures.
//
// With -hold it stays connected after printing the summary until it gets
// SIGTERM or SIGINT, so a test can inspect the xDS stream (ACKs, NACKs) on
// the server while the client is still there; -summary also writes the
// summary to a file (atomically), for a test that reads it from there.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and the xDS LB policies
)

const echoMethod = "/eds.echo.v1.Echo/Echo"

// echoRequest is eds.echo.v1.EchoRequest.
type echoRequest struct {
	Message string // 1
	WorkUs  uint64 // 2
}

// echoReply is eds.echo.v1.EchoReply.
type echoReply struct {
	Message  string // 1
	Pod      string // 2
	Zone     string // 3
	InFlight uint32 // 4
}

func (r *echoRequest) marshal() []byte {
	var b []byte
	if r.Message != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, r.Message)
	}
	if r.WorkUs != 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, r.WorkUs)
	}
	return b
}

func (r *echoReply) unmarshal(b []byte) error {
	*r = echoReply{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num >= 1 && num <= 3 && typ == protowire.BytesType:
			s, n := protowire.ConsumeString(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			switch num {
			case 1:
				r.Message = s
			case 2:
				r.Pod = s
			case 3:
				r.Zone = s
			}
		case num == 4 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			r.InFlight = uint32(v)
		default: // unknown field: skip it, as protobuf does
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return nil
}

// codec marshals exactly the two echo messages. Named "proto", so requests
// carry the usual content-type application/grpc+proto.
type codec struct{}

func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) ([]byte, error) {
	req, ok := v.(*echoRequest)
	if !ok {
		return nil, fmt.Errorf("codec: cannot marshal %T", v)
	}
	return req.marshal(), nil
}

func (codec) Unmarshal(data []byte, v any) error {
	reply, ok := v.(*echoReply)
	if !ok {
		return fmt.Errorf("codec: cannot unmarshal into %T", v)
	}
	return reply.unmarshal(data)
}

// summary is what the program prints, as one line of JSON.
type summary struct {
	Target    string         `json:"target"`
	Requested int            `json:"requested"`
	OK        int            `json:"ok"`
	Failed    int            `json:"failed"`
	NotSent   int            `json:"not_sent"`
	Pods      map[string]int `json:"pods"`
	Zones     map[string]int `json:"zones"`
	// Errors counts failures by "<code>: <message>", at most maxErrorKinds kinds.
	Errors    map[string]int `json:"errors"`
	ElapsedMs int64          `json:"elapsed_ms"`
}

const maxErrorKinds = 8

func main() {
	target := flag.String("target", "", "xDS target, e.g. echo.demo:8080 (dialled as xds:///<target>)")
	n := flag.Int("n", 200, "number of Echo calls, made one after another")
	rpcTimeout := flag.Duration("rpc-timeout", 10*time.Second, "deadline of each call")
	total := flag.Duration("deadline", 60*time.Second, "time for all calls; calls not started by then are counted as not_sent")
	workUs := flag.Uint64("work-us", 0, "server-side work per call, in microseconds")
	summaryFile := flag.String("summary", "", "also write the summary to this file")
	hold := flag.Bool("hold", false, "after printing the summary, stay connected until SIGTERM or SIGINT")
	flag.Parse()
	if *target == "" || *n < 0 {
		fmt.Fprintln(os.Stderr, "usage: client -target host:port [-n N] [-rpc-timeout D] [-deadline D] [-summary FILE] [-hold]")
		os.Exit(2)
	}
	if os.Getenv("GRPC_XDS_BOOTSTRAP") == "" && os.Getenv("GRPC_XDS_BOOTSTRAP_CONFIG") == "" {
		fmt.Fprintln(os.Stderr, "client: set GRPC_XDS_BOOTSTRAP (a file) or GRPC_XDS_BOOTSTRAP_CONFIG (JSON)")
		os.Exit(2)
	}

	conn, err := grpc.NewClient("xds:///"+*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "client: creating the channel: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()

	out := summary{
		Target:    *target,
		Requested: *n,
		Pods:      map[string]int{},
		Zones:     map[string]int{},
		Errors:    map[string]int{},
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), *total)
	defer cancel()
	for i := 0; i < *n; i++ {
		if ctx.Err() != nil {
			out.NotSent = *n - i
			break
		}
		req := &echoRequest{Message: fmt.Sprintf("grpc-go %d", i), WorkUs: *workUs}
		reply := &echoReply{}
		callCtx, callCancel := context.WithTimeout(ctx, *rpcTimeout)
		err := conn.Invoke(callCtx, echoMethod, req, reply, grpc.ForceCodec(codec{}))
		callCancel()
		if err != nil {
			out.Failed++
			st := status.Convert(err)
			key := fmt.Sprintf("%s: %s", st.Code(), st.Message())
			if _, seen := out.Errors[key]; seen || len(out.Errors) < maxErrorKinds {
				out.Errors[key]++
			}
			continue
		}
		out.OK++
		out.Pods[reply.Pod]++
		out.Zones[reply.Zone]++
	}
	out.ElapsedMs = time.Since(start).Milliseconds()

	line, err := json.Marshal(out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "client: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(string(line))
	if *summaryFile != "" {
		if err := writeAtomically(*summaryFile, append(line, '\n')); err != nil {
			fmt.Fprintf(os.Stderr, "client: writing the summary: %v\n", err)
			os.Exit(1)
		}
	}

	if *hold {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
	}
}

// writeAtomically writes data to path through a temporary file and a
// rename, so a reader never sees half a summary.
func writeAtomically(path string, data []byte) error {
	tmp := path + ".partial"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
