// Command client is a stock grpc-go xDS client for eds-server's interop
// tests. It speaks the contract every interop client shares (see
// devkit/src/interop/mod.rs): it dials xds:///<target> (the bootstrap comes
// from GRPC_XDS_BOOTSTRAP, as for any proxyless gRPC application), calls
// eds.echo.v1.Echo/Echo one call at a time at a fixed rate, and prints one
// line of JSON per call:
//
//	{"t_ms":<unix ms when it ended>,"lat_ms":..,"code":0,"pod":"echo-a0","zone":"zone-a","key":"k3"}
//	{"t_ms":..,"lat_ms":..,"code":14,"msg":"<status message>"}
//
// It stops after -count calls (0: never) or on SIGTERM/SIGINT; with -hold it
// stays connected after the last call until a signal, so a test can inspect
// the xDS stream (ACKs, NACKs) on the server while the client is there.
// -header name=value adds request metadata (the ring-hash key); with
// -key-cycle N the value gets the suffix i%N, so one run covers N keys.
//
// The echo messages are encoded by hand with protowire (two tiny messages,
// see proto/proto/echo.proto), so the program needs no generated code and no
// protoc. Balancing is entirely grpc-go's own: its xDS resolver and the
// cluster, priority and endpoint-picking policies eds-server configures.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
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

// record is one call, as printed.
type record struct {
	TMs   int64   `json:"t_ms"`
	LatMs float64 `json:"lat_ms"`
	Code  uint32  `json:"code"`
	Pod   string  `json:"pod,omitempty"`
	Zone  string  `json:"zone,omitempty"`
	Key   string  `json:"key,omitempty"`
	Msg   string  `json:"msg,omitempty"`
}

func main() {
	target := flag.String("target", "", "xDS target, e.g. echo.demo:8080 (dialled as xds:///<target>)")
	count := flag.Int("count", 0, "calls to make; 0: until SIGTERM or SIGINT")
	rate := flag.Float64("rate", 100, "calls per second (one at a time; 0: back to back)")
	header := flag.String("header", "", "request metadata name=value, e.g. x-user=k")
	keyCycle := flag.Int("key-cycle", 0, "if > 0, append i%N to the header value of call i")
	rpcTimeout := flag.Float64("rpc-timeout", 5, "deadline of each call, in seconds")
	outFile := flag.String("out", "", "write the JSON lines to this file instead of stdout")
	hold := flag.Bool("hold", false, "after the last call, stay connected until SIGTERM or SIGINT")
	flag.Parse()
	var hName, hValue string
	if *header != "" {
		var ok bool
		hName, hValue, ok = strings.Cut(*header, "=")
		if !ok || hName == "" {
			fmt.Fprintln(os.Stderr, "client: -header must be name=value")
			os.Exit(2)
		}
	}
	if *target == "" || *count < 0 || *rate < 0 || *rpcTimeout <= 0 {
		fmt.Fprintln(os.Stderr, "usage: client -target host:port [-count N] [-rate R] [-header n=v [-key-cycle N]] [-out FILE] [-hold]")
		os.Exit(2)
	}
	if os.Getenv("GRPC_XDS_BOOTSTRAP") == "" && os.Getenv("GRPC_XDS_BOOTSTRAP_CONFIG") == "" {
		fmt.Fprintln(os.Stderr, "client: set GRPC_XDS_BOOTSTRAP (a file) or GRPC_XDS_BOOTSTRAP_CONFIG (JSON)")
		os.Exit(2)
	}
	var sink io.Writer = os.Stdout
	if *outFile != "" {
		f, err := os.Create(*outFile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "client: %v\n", err)
			os.Exit(1)
		}
		defer f.Close()
		sink = f
	}
	// One write per line: a reader tailing the file never sees half a record
	// unless it reads mid-write, and then it waits for the newline.
	out := bufio.NewWriter(sink)

	conn, err := grpc.NewClient("xds:///"+*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "client: creating the channel: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var interval time.Duration
	if *rate > 0 {
		interval = time.Duration(float64(time.Second) / *rate)
	}
	start := time.Now()
	for i := 0; *count == 0 || i < *count; i++ {
		// Paced against the start, not the last call, so slow calls do not
		// lower the rate; a client that fell behind sends at once.
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
		if ctx.Err() != nil {
			break
		}
		callCtx, cancel := context.WithTimeout(ctx, time.Duration(*rpcTimeout*float64(time.Second)))
		rec := record{}
		if hName != "" {
			rec.Key = hValue
			if *keyCycle > 0 {
				rec.Key = fmt.Sprintf("%s%d", hValue, i%*keyCycle)
			}
			callCtx = metadata.AppendToOutgoingContext(callCtx, hName, rec.Key)
		}
		req := &echoRequest{Message: fmt.Sprintf("grpc-go %d", i)}
		reply := &echoReply{}
		began := time.Now()
		err := conn.Invoke(callCtx, echoMethod, req, reply, grpc.ForceCodec(codec{}))
		cancel()
		ended := time.Now()
		rec.TMs = ended.UnixMilli()
		rec.LatMs = float64(ended.Sub(began).Microseconds()) / 1000
		if err != nil {
			if ctx.Err() != nil {
				break // stopped mid-call: not the backend's fault
			}
			st := status.Convert(err)
			rec.Code = uint32(st.Code())
			rec.Msg = st.Message()
		} else {
			rec.Pod, rec.Zone = reply.Pod, reply.Zone
		}
		line, _ := json.Marshal(rec)
		out.Write(append(line, '\n'))
		out.Flush()
	}
	out.Flush()
	if *hold {
		<-ctx.Done()
	}
}
