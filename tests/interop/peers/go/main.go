// go-peer: a go-libp2p + go-libp2p-kad-dht node on 127.0.0.1, driven by JSON lines.
//
// Usage:
//
//	go-peer --listen /ip4/127.0.0.1/tcp/0 --protocol /icn/kad/1.0.0 --mode server|client
//
// Once listening it prints one line {"event":"ready","peer_id":...,"addrs":[...],"protocols":[...]}
// on stdout, then answers each stdin line {"id":N,"cmd":NAME,"timeout_s":T,...} with exactly one
// line {"id":N,"ok":true,...} or {"id":N,"ok":false,"error":"..."}. Logs go to stderr only.
// Commands run one at a time, in order. stdin closing, "stop" or "quit" end the program (exit 0).
//
// The DHT keeps go-libp2p-kad-dht's defaults (bucket size 20, alpha 10, its default filters)
// apart from the protocol prefix, the mode, no bootstrap peers, and one extra validator for the
// test namespace "/test/". About loopback: with a non-Amino prefix dht.New's defaults filter
// nothing. Its defaults are EmptyQueryFilter, EmptyRTFilter, a nil AddressFilter and no routing
// table diversity filter. The public-only filters (PublicQueryFilter, PublicRoutingTableFilter)
// are set only by the "dual" and "fullrt" wrappers, not by dht.New. So 127.0.0.1 peers are
// usable without any extra option, and none is passed. The host keeps go-libp2p's default
// resource manager and connection manager: neither got in the way of these loopback tests.
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

const defaultTimeout = 20 * time.Second

// permissive accepts every record under /test/ and picks the first of several.
type permissive struct{}

func (permissive) Validate(string, []byte) error { return nil }

func (permissive) Select(_ string, values [][]byte) (int, error) {
	if len(values) == 0 {
		return 0, errors.New("no values to select from")
	}
	return 0, nil
}

type peerNode struct {
	host host.Host
	dht  *dht.IpfsDHT
	out  *json.Encoder
	mu   sync.Mutex
}

func (n *peerNode) emit(obj map[string]any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.out.Encode(obj); err != nil {
		log.Printf("writing stdout: %v", err)
	}
}

// result is what a command answers with; it is merged into {"id":N,"ok":true}.
type result map[string]any

type request struct {
	raw  map[string]any
	id   any
	name string
}

func (r request) str(key string) string {
	if v, ok := r.raw[key].(string); ok {
		return v
	}
	return ""
}

func (r request) num(key string, fallback float64) float64 {
	if v, ok := r.raw[key].(float64); ok {
		return v
	}
	return fallback
}

func (r request) bytes(key string) ([]byte, error) {
	text, ok := r.raw[key].(string)
	if !ok {
		return nil, fmt.Errorf("missing %s", key)
	}
	data, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("bad base64 in %s: %w", key, err)
	}
	return data, nil
}

func stringsOf[T fmt.Stringer](items []T) []string {
	out := make([]string, 0, len(items))
	for _, item := range items {
		out = append(out, item.String())
	}
	return out
}

func protocolStrings[T ~string](items []T) []string {
	out := make([]string, 0, len(items))
	for _, item := range items {
		out = append(out, string(item))
	}
	return out
}

// addrInfo parses a /p2p/ multiaddr, or a bare peer id from "peer_id" when "addr" is absent.
func (r request) addrInfo() (*peer.AddrInfo, error) {
	if addr := r.str("addr"); addr != "" {
		m, err := ma.NewMultiaddr(addr)
		if err != nil {
			return nil, fmt.Errorf("bad multiaddr %q: %w", addr, err)
		}
		if info, err := peer.AddrInfoFromP2pAddr(m); err == nil {
			return info, nil
		}
		// A transport address without /p2p/: the peer is named by "peer_id".
		text := r.str("peer_id")
		if text == "" {
			return nil, fmt.Errorf("multiaddr %q has no /p2p/ and no peer_id is given", addr)
		}
		id, err := peer.Decode(text)
		if err != nil {
			return nil, fmt.Errorf("bad peer id %q: %w", text, err)
		}
		return &peer.AddrInfo{ID: id, Addrs: []ma.Multiaddr{m}}, nil
	}
	if text := r.str("peer_id"); text != "" {
		id, err := peer.Decode(text)
		if err != nil {
			return nil, fmt.Errorf("bad peer id %q: %w", text, err)
		}
		return &peer.AddrInfo{ID: id}, nil
	}
	return nil, errors.New("needs addr or peer_id")
}

// waitIdentified returns once identify has run on a connection to p (go's host.Connect already
// waits for it when it dials, but not when a connection to p existed before, e.g. p dialed us).
func (n *peerNode) waitIdentified(ctx context.Context, p peer.ID) error {
	ids, ok := n.host.(interface{ IDService() identify.IDService })
	conns := n.host.Network().ConnsToPeer(p)
	if len(conns) == 0 {
		return fmt.Errorf("not connected to %s", p)
	}
	if ok {
		select {
		case <-ids.IDService().IdentifyWait(conns[0]):
		case <-ctx.Done():
			return fmt.Errorf("identify with %s did not finish: %w", p, ctx.Err())
		}
	}
	// Identify fills the peerstore's protocols: wait for them (IdentifyWait also closes on a
	// failed identify).
	for {
		protos, err := n.host.Peerstore().GetProtocols(p)
		if err == nil && len(protos) > 0 {
			return nil
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("identify with %s gave no protocols: %w", p, ctx.Err())
		}
	}
}

func (n *peerNode) connect(ctx context.Context, info *peer.AddrInfo) error {
	if len(info.Addrs) > 0 || n.host.Network().Connectedness(info.ID) != network.Connected {
		if err := n.host.Connect(ctx, *info); err != nil {
			return err
		}
	}
	return n.waitIdentified(ctx, info.ID)
}

func (n *peerNode) run(ctx context.Context, r request) (result, error) {
	switch r.name {
	case "dial":
		info, err := r.addrInfo()
		if err != nil {
			return nil, err
		}
		if err := n.connect(ctx, info); err != nil {
			return nil, err
		}
		return result{}, nil

	case "ping":
		info, err := r.addrInfo()
		if err != nil {
			return nil, err
		}
		if len(info.Addrs) > 0 {
			if err := n.host.Connect(ctx, *info); err != nil {
				return nil, err
			}
		}
		count := int(r.num("count", 1))
		if count < 1 {
			count = 1
		}
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		results := ping.Ping(pctx, n.host, info.ID)
		rtts := make([]float64, 0, count)
		for len(rtts) < count {
			select {
			case res, ok := <-results:
				if !ok {
					return nil, errors.New("ping stream closed early")
				}
				if res.Error != nil {
					return nil, res.Error
				}
				rtts = append(rtts, float64(res.RTT.Microseconds())/1000)
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return result{"rtt_ms": rtts}, nil

	case "peer_info":
		info, err := r.addrInfo()
		if err != nil {
			return nil, err
		}
		ps := n.host.Peerstore()
		protos, _ := ps.GetProtocols(info.ID)
		agent := ""
		if v, err := ps.Get(info.ID, "AgentVersion"); err == nil {
			agent, _ = v.(string)
		}
		return result{
			"protocols": protocolStrings(protos),
			"addrs":     stringsOf(ps.Addrs(info.ID)),
			"agent":     agent,
		}, nil

	case "add_peer":
		info, err := r.addrInfo()
		if err != nil {
			return nil, err
		}
		if text := r.str("peer_id"); text != "" && r.str("addr") != "" {
			if id, err := peer.Decode(text); err == nil && id != info.ID {
				return nil, fmt.Errorf("addr is for %s, not %s", info.ID, id)
			}
		}
		if len(info.Addrs) > 0 {
			n.host.Peerstore().AddAddrs(info.ID, info.Addrs, peerstore.PermanentAddrTTL)
		}
		added, err := n.dht.RoutingTable().TryAddPeer(info.ID, true, false)
		if err != nil {
			return nil, err
		}
		return result{"added": added}, nil

	case "routing_table":
		peers := n.dht.RoutingTable().ListPeers()
		return result{"size": len(peers), "peers": stringsOf(peers)}, nil

	case "bootstrap":
		if err := n.dht.Bootstrap(ctx); err != nil {
			return nil, err
		}
		select {
		case err := <-n.dht.RefreshRoutingTable():
			if err != nil {
				return nil, err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return result{}, nil

	case "provide":
		c, err := cid.Decode(r.str("cid"))
		if err != nil {
			return nil, fmt.Errorf("bad cid: %w", err)
		}
		if err := n.dht.Provide(ctx, c, true); err != nil {
			return nil, err
		}
		return result{}, nil

	case "find_providers":
		c, err := cid.Decode(r.str("cid"))
		if err != nil {
			return nil, fmt.Errorf("bad cid: %w", err)
		}
		count := int(r.num("count", 20))
		providers := []map[string]any{}
		for info := range n.dht.FindProvidersAsync(ctx, c, count) {
			providers = append(providers, map[string]any{
				"peer_id": info.ID.String(),
				"addrs":   stringsOf(info.Addrs),
			})
		}
		// The channel also closes when ctx ends: that is a timeout, not an answer.
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("%w after %d providers", err, len(providers))
		}
		return result{"providers": providers}, nil

	case "closest_peers":
		key, err := r.bytes("key_b64")
		if err != nil {
			return nil, err
		}
		peers, err := n.dht.GetClosestPeers(ctx, string(key))
		if err != nil {
			return nil, err
		}
		return result{"peers": stringsOf(peers)}, nil

	case "put_value":
		key, err := r.bytes("key_b64")
		if err != nil {
			return nil, err
		}
		value, err := r.bytes("value_b64")
		if err != nil {
			return nil, err
		}
		if err := n.dht.PutValue(ctx, string(key), value); err != nil {
			return nil, err
		}
		return result{}, nil

	case "get_value":
		key, err := r.bytes("key_b64")
		if err != nil {
			return nil, err
		}
		value, err := n.dht.GetValue(ctx, string(key))
		if errors.Is(err, routing.ErrNotFound) {
			return result{"value_b64": nil}, nil
		}
		if err != nil {
			return nil, err
		}
		return result{"value_b64": base64.StdEncoding.EncodeToString(value)}, nil
	}
	return nil, fmt.Errorf("unknown command %s", r.name)
}

// handle answers one line; it returns true when the program should exit.
func (n *peerNode) handle(line []byte) bool {
	var raw map[string]any
	if err := json.Unmarshal(line, &raw); err != nil || raw == nil {
		n.emit(map[string]any{"id": nil, "ok": false, "error": fmt.Sprintf("unknown command %q", string(line))})
		return false
	}
	r := request{raw: raw, id: raw["id"]}
	r.name, _ = raw["cmd"].(string)
	if r.id == nil {
		// As the rust peer: a request nobody could match an answer to is refused, not run.
		n.emit(map[string]any{"id": nil, "ok": false, "error": fmt.Sprintf("unknown command %s (request without id)", r.name)})
		return false
	}
	if r.name == "stop" || r.name == "quit" {
		n.emit(map[string]any{"id": r.id, "ok": true})
		return true
	}
	timeout := defaultTimeout
	if t := r.num("timeout_s", 0); t > 0 {
		timeout = time.Duration(t * float64(time.Second))
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	type outcome struct {
		res result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := n.run(ctx, r)
		done <- outcome{res, err}
	}()
	var o outcome
	select {
	case o = <-done:
	case <-ctx.Done():
		// Give a call that honours ctx a moment to return its own error; never hang past that.
		select {
		case o = <-done:
		case <-time.After(500 * time.Millisecond):
			o.err = fmt.Errorf("%s timed out after %s", r.name, timeout)
		}
	}
	if o.err == nil && ctx.Err() != nil {
		o.err = fmt.Errorf("%s timed out after %s", r.name, timeout)
	}
	if o.err != nil {
		n.emit(map[string]any{"id": r.id, "ok": false, "error": o.err.Error()})
		return false
	}
	answer := map[string]any{}
	for k, v := range o.res {
		answer[k] = v
	}
	answer["id"] = r.id
	answer["ok"] = true
	n.emit(answer)
	return false
}

func main() {
	listen := flag.String("listen", "/ip4/127.0.0.1/tcp/0", "listen multiaddr")
	proto := flag.String("protocol", "/icn/kad/1.0.0", "kad protocol id, PREFIX/kad/1.0.0")
	modeName := flag.String("mode", "server", "server or client")
	flag.Parse()
	log.SetOutput(os.Stderr)
	log.SetPrefix("go-peer: ")

	prefix, ok := strings.CutSuffix(*proto, "/kad/1.0.0")
	if !ok || prefix == "" {
		log.Fatalf("--protocol %q must be PREFIX/kad/1.0.0", *proto)
	}
	var mode dht.ModeOpt
	switch *modeName {
	case "server":
		mode = dht.ModeServer
	case "client":
		mode = dht.ModeClient
	default:
		log.Fatalf("--mode must be server or client, not %q", *modeName)
	}

	priv, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		log.Fatalf("generating key: %v", err)
	}
	h, err := libp2p.New(
		libp2p.Identity(priv),
		libp2p.ListenAddrStrings(*listen),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.Ping(true),
		// go's default agent is "<main module>@<version>", which names this program and no
		// library: name the libraries, so a peerstore shows which go-libp2p it met.
		libp2p.UserAgent(userAgent()),
		// TCP only: without this go-libp2p adds the circuit-relay v2 client transport.
		libp2p.DisableRelay(),
	)
	if err != nil {
		log.Fatalf("starting host: %v", err)
	}

	options := []dht.Option{
		dht.Mode(mode),
		dht.ProtocolPrefix(protocol.ID(prefix)),
		dht.BootstrapPeers(), // none: the tests say whom to dial
	}
	// Under the Amino prefix "/ipfs" go-libp2p-kad-dht refuses any validator beyond /pk/ and
	// /ipns/ ("protocol prefix /ipfs must have exactly two namespaced validators"), so there
	// /test/ records are refused like any unknown namespace.
	if prefix != "/ipfs" {
		options = append(options, dht.NamespacedValidator("test", permissive{}))
	} else {
		log.Printf("prefix /ipfs: no /test/ validator (go allows only /pk/ and /ipns/ there)")
	}
	kad, err := dht.New(h, options...)
	if err != nil {
		log.Fatalf("starting dht: %v", err)
	}

	n := &peerNode{host: h, dht: kad, out: json.NewEncoder(os.Stdout)}
	n.emit(map[string]any{
		"event":     "ready",
		"peer_id":   h.ID().String(),
		"addrs":     fullAddrs(h),
		"protocols": protocolStrings(h.Mux().Protocols()),
	})

	reader := bufio.NewReaderSize(os.Stdin, 1<<16)
	for {
		line, err := reader.ReadBytes('\n')
		if trimmed := strings.TrimSpace(string(line)); trimmed != "" {
			if n.handle([]byte(trimmed)) {
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				log.Printf("reading stdin: %v", err)
			}
			break
		}
	}
	_ = kad.Close()
	_ = h.Close()
	os.Exit(0)
}

// userAgent is "shardroute-interop-go-peer go-libp2p/vX go-libp2p-kad-dht/vY" from the build info.
func userAgent() string {
	agent := "shardroute-interop-go-peer"
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return agent
	}
	for _, dep := range info.Deps {
		switch dep.Path {
		case "github.com/libp2p/go-libp2p", "github.com/libp2p/go-libp2p-kad-dht":
			agent += " " + strings.TrimPrefix(dep.Path, "github.com/libp2p/") + "/" + dep.Version
		}
	}
	return agent
}

// fullAddrs is the host's listen addresses with /p2p/<id>. host.Addrs() is the advertised set,
// which on a 127.0.0.1-only listener is the loopback address itself.
func fullAddrs(h host.Host) []string {
	addrs := h.Addrs()
	if len(addrs) == 0 {
		addrs = h.Network().ListenAddresses()
	}
	infos, err := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: h.ID(), Addrs: addrs})
	if err != nil {
		log.Fatalf("building addresses: %v", err)
	}
	return stringsOf(infos)
}
