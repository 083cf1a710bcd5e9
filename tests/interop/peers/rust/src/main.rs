//! A rust-libp2p Kademlia node driven by JSON lines on stdin, for shardroute's interop tests.
//!
//! Kademlia is configured as the video network's ICN nodes configure it (custom protocol name,
//! 10 s query timeout, k = 20, 12 h provider publication interval and record / provider TTLs,
//! MemoryStore, explicit server or client mode) and keeps rust-libp2p's default 16 KiB maximum
//! packet size.
//!
//! Protocol: prints `{"event":"ready",...}` once listening, then answers each command line
//! `{"id":N,"cmd":NAME,"timeout_s":T,...}` with exactly one line `{"id":N,"ok":true,...}` or
//! `{"id":N,"ok":false,"error":"..."}`. Commands run one at a time, in order; the swarm keeps
//! being polled while a command waits. Logs go to stderr (RUST_LOG sets the filter).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::StreamExt;
use libp2p::core::Endpoint;
use libp2p::kad::store::{MemoryStore, RecordStore};
use libp2p::kad::{
    self, GetClosestPeersError, GetProvidersError, GetProvidersOk, GetRecordError, GetRecordOk,
    Mode, QueryId, QueryResult, QueryStats, Quorum, Record, RecordKey, RoutingUpdate,
};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

const LIBP2P_VERSION: &str = "0.57.1";
const IDENTIFY_PROTOCOL_VERSION: &str = "/ipfs/0.1.0";
const TWELVE_HOURS: Duration = Duration::from_secs(12 * 60 * 60);
const DEFAULT_TIMEOUT_S: f64 = 20.0;

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

struct Args {
    listen: Multiaddr,
    protocol: String,
    mode: Mode,
    external_addrs: bool,
}

fn usage(problem: &str) -> ! {
    eprintln!("rust-peer: {problem}");
    eprintln!(
        "usage: rust-peer [--listen MULTIADDR] [--protocol PROTO] [--mode server|client] \
         [--no-external-addrs]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        listen: "/ip4/127.0.0.1/tcp/0"
            .parse()
            .expect("default listen address"),
        protocol: "/icn/kad/1.0.0".to_string(),
        mode: Mode::Server,
        external_addrs: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let value = |it: &mut std::iter::Skip<std::env::Args>| {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match name.as_str() {
            "--listen" => {
                let v = value(&mut it);
                args.listen = v
                    .parse()
                    .unwrap_or_else(|e| usage(&format!("bad --listen {v}: {e}")));
            }
            "--protocol" => args.protocol = value(&mut it),
            "--mode" => {
                args.mode = match value(&mut it).as_str() {
                    "server" => Mode::Server,
                    "client" => Mode::Client,
                    other => usage(&format!("bad --mode {other}")),
                }
            }
            "--no-external-addrs" => args.external_addrs = false,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    args
}

// ---------------------------------------------------------------------------------------------
// CIDs: the DHT key of a CID is its multihash. Hand-parsed: multibase b/B (base32), z
// (base58btc), f/F (base16), k/K (base36), m/u (base64), and bare base58 CIDv0 ("Qm...").

fn base32_decode(text: &str) -> Result<Vec<u8>, String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u64, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let c = c.to_ascii_lowercase();
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| format!("invalid base32 character {:?}", c as char))?;
        buffer = (buffer << 5) | v as u64;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

fn base_n_decode(text: &str, alphabet: &[u8]) -> Result<Vec<u8>, String> {
    let base = alphabet.len() as u32;
    let mut digits: Vec<u8> = Vec::new(); // little-endian base-256
    for c in text.bytes() {
        let mut carry = alphabet
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| format!("invalid character {:?}", c as char))?
            as u32;
        for d in digits.iter_mut() {
            carry += (*d as u32) * base;
            *d = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            digits.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let zeros = text.bytes().take_while(|&c| c == alphabet[0]).count();
    let mut out = vec![0u8; zeros];
    out.extend(digits.iter().rev());
    Ok(out)
}

const BASE58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const BASE36: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn hex_decode(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("odd-length base16".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn read_uvarint(data: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn check_multihash(mh: &[u8]) -> Result<(), String> {
    let mut pos = 0;
    let _code = read_uvarint(mh, &mut pos)?;
    let len = read_uvarint(mh, &mut pos)? as usize;
    if mh.len() - pos != len {
        return Err(format!(
            "multihash declares {len} digest bytes, carries {}",
            mh.len() - pos
        ));
    }
    Ok(())
}

/// The multihash bytes of a CID in text form.
fn cid_multihash(text: &str) -> Result<Vec<u8>, String> {
    if text.len() == 46 && text.starts_with("Qm") {
        let mh = base_n_decode(text, BASE58)?;
        check_multihash(&mh)?;
        return Ok(mh);
    }
    let mut chars = text.chars();
    let prefix = chars.next().ok_or("empty CID")?;
    let rest = chars.as_str();
    let bytes = match prefix {
        'b' | 'B' => base32_decode(rest)?,
        'z' => base_n_decode(rest, BASE58)?,
        'f' | 'F' => hex_decode(rest)?,
        'k' | 'K' => base_n_decode(&rest.to_ascii_lowercase(), BASE36)?,
        'm' => base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(rest.trim_end_matches('='))
            .map_err(|e| e.to_string())?,
        'u' => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(rest.trim_end_matches('='))
            .map_err(|e| e.to_string())?,
        other => return Err(format!("unsupported multibase prefix {other:?}")),
    };
    if bytes.len() == 34 && bytes[0] == 0x12 && bytes[1] == 0x20 {
        return Ok(bytes); // a CIDv0 multihash in a multibase wrapper
    }
    let mut pos = 0;
    let version = read_uvarint(&bytes, &mut pos)?;
    if version != 1 {
        return Err(format!("unsupported CID version {version}"));
    }
    let _codec = read_uvarint(&bytes, &mut pos)?;
    let mh = bytes[pos..].to_vec();
    check_multihash(&mh)?;
    Ok(mh)
}

// ---------------------------------------------------------------------------------------------

fn p2p_peer(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// Only loopback addresses are ever handed to Kademlia from identify: this peer runs in tests
/// on 127.0.0.1 and must never dial anything else.
fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

fn stats_json(stats: &QueryStats) -> Value {
    json!({
        "requests": stats.num_requests(),
        "successes": stats.num_successes(),
        "failures": stats.num_failures(),
    })
}

enum Op {
    Dial {
        peer: PeerId,
        connection: ConnectionId,
    },
    Ping {
        peer: PeerId,
        count: usize,
        rtts: Vec<f64>,
        last_error: Option<String>,
    },
    Bootstrap {
        qid: QueryId,
    },
    Provide {
        qid: QueryId,
        settle: Duration,
    },
    /// Answers `result` when the deadline passes, the swarm polled meanwhile.
    Settle {
        result: Value,
    },
    FindProviders {
        qid: QueryId,
        key: RecordKey,
        count: usize,
        found: Vec<PeerId>,
    },
    Closest {
        qid: QueryId,
    },
    Put {
        qid: QueryId,
    },
    Get {
        qid: QueryId,
    },
}

impl Op {
    fn query(&self) -> Option<QueryId> {
        match self {
            Op::Bootstrap { qid }
            | Op::Provide { qid, .. }
            | Op::FindProviders { qid, .. }
            | Op::Closest { qid }
            | Op::Put { qid }
            | Op::Get { qid } => Some(*qid),
            Op::Dial { .. } | Op::Ping { .. } | Op::Settle { .. } => None,
        }
    }
}

struct Pending {
    id: Value,
    deadline: Instant,
    timeout_s: f64,
    op: Op,
}

struct App {
    swarm: Swarm<Behaviour>,
    protocol: StreamProtocol,
    pending: Option<Pending>,
    /// The last identify info received from each connected peer (dropped when the last
    /// connection to it closes, so `dial` waits for a fresh one).
    identified: HashMap<PeerId, identify::Info>,
}

fn emit(value: Value) {
    // stdout is line-buffered: one println is one flushed JSON line.
    println!("{value}");
}

fn answer(id: &Value, result: Result<Value, String>) {
    let mut line = match result {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(other) => json!({ "result": other }),
        Err(error) => json!({ "ok": false, "error": error }),
    };
    let obj = line.as_object_mut().expect("object");
    obj.entry("ok").or_insert(Value::Bool(true));
    obj.insert("id".into(), id.clone());
    emit(line);
}

fn str_arg<'a>(req: &'a Value, name: &str) -> Result<&'a str, String> {
    req.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string argument {name:?}"))
}

fn b64_arg(req: &Value, name: &str) -> Result<Vec<u8>, String> {
    B64.decode(str_arg(req, name)?)
        .map_err(|e| format!("argument {name:?} is not base64: {e}"))
}

fn peer_arg(req: &Value) -> Result<PeerId, String> {
    let text = str_arg(req, "peer_id")?;
    text.parse().map_err(|e| format!("bad peer_id {text}: {e}"))
}

impl App {
    fn kad(&mut self) -> &mut kad::Behaviour<MemoryStore> {
        &mut self.swarm.behaviour_mut().kad
    }

    fn finish(&mut self, result: Result<Value, String>) {
        if let Some(p) = self.pending.take() {
            if let Some(qid) = p.op.query() {
                if let Some(mut q) = self.kad().query_mut(&qid) {
                    q.finish();
                }
            }
            answer(&p.id, result);
        }
    }

    /// Addresses this node knows for `peer`: Kademlia's (routing table entry plus the addresses
    /// carried in the answers of queries still running), provider records in the local store
    /// for `key`, and the listen addresses from the peer's identify info.
    fn known_addrs(&mut self, peer: &PeerId, key: Option<&RecordKey>) -> Vec<String> {
        let mut addrs: Vec<Multiaddr> = Vec::new();
        if let Ok(found) = self.kad().handle_pending_outbound_connection(
            ConnectionId::new_unchecked(0),
            Some(*peer),
            &[],
            Endpoint::Dialer,
        ) {
            addrs.extend(found);
        }
        if let Some(key) = key {
            for record in self.kad().store_mut().providers(key) {
                if &record.provider == peer {
                    addrs.extend(record.addresses);
                }
            }
        }
        if let Some(info) = self.identified.get(peer) {
            addrs.extend(info.listen_addrs.iter().cloned());
        }
        if peer == self.swarm.local_peer_id() {
            addrs.extend(self.swarm.listeners().cloned());
        }
        let mut seen = HashSet::new();
        addrs
            .iter()
            .map(without_p2p)
            .filter(|a| seen.insert(a.clone()))
            .map(|a| a.to_string())
            .collect()
    }

    fn routing_table(&mut self) -> Vec<String> {
        let mut peers = Vec::new();
        for bucket in self.kad().kbuckets() {
            for entry in bucket.iter() {
                peers.push(entry.node.key.preimage().to_string());
            }
        }
        peers
    }

    fn dial_done(&self, peer: &PeerId) -> bool {
        self.swarm.is_connected(peer) && self.identified.contains_key(peer)
    }

    /// Starts one command. Returns an immediate result, or None when `self.pending` was set.
    fn start(&mut self, id: Value, req: &Value) -> Option<Result<Value, String>> {
        let cmd = req.get("cmd").and_then(Value::as_str).unwrap_or("");
        let timeout_s = req
            .get("timeout_s")
            .and_then(Value::as_f64)
            .filter(|t| *t > 0.0)
            .unwrap_or(DEFAULT_TIMEOUT_S);
        let deadline = Instant::now() + Duration::from_secs_f64(timeout_s);
        let op = match self.start_op(cmd, req) {
            Ok(Ok(op)) => op,
            Ok(Err(immediate)) => return Some(Ok(immediate)),
            Err(e) => return Some(Err(e)),
        };
        self.pending = Some(Pending {
            id,
            deadline,
            timeout_s,
            op,
        });
        self.check_pending();
        None
    }

    /// Ok(Ok(op)): wait for op; Ok(Err(value)): answered at once; Err: failed at once.
    fn start_op(&mut self, cmd: &str, req: &Value) -> Result<Result<Op, Value>, String> {
        match cmd {
            "dial" => {
                let text = str_arg(req, "addr")?;
                let addr: Multiaddr = text.parse().map_err(|e| format!("bad addr {text}: {e}"))?;
                let peer = p2p_peer(&addr).ok_or("addr has no /p2p/ peer id")?;
                if self.dial_done(&peer) {
                    return Ok(Err(json!({})));
                }
                let opts = DialOpts::peer_id(peer)
                    .addresses(vec![without_p2p(&addr)])
                    .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                    .build();
                let connection = opts.connection_id();
                self.swarm
                    .dial(opts)
                    .map_err(|e| format!("dial {addr}: {e}"))?;
                Ok(Ok(Op::Dial { peer, connection }))
            }
            "ping" => {
                let count = req.get("count").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
                let peer = if let Some(text) = req.get("addr").and_then(Value::as_str) {
                    let addr: Multiaddr =
                        text.parse().map_err(|e| format!("bad addr {text}: {e}"))?;
                    let peer = p2p_peer(&addr).ok_or("addr has no /p2p/ peer id")?;
                    if !self.swarm.is_connected(&peer) {
                        self.swarm
                            .dial(
                                DialOpts::peer_id(peer)
                                    .addresses(vec![without_p2p(&addr)])
                                    .build(),
                            )
                            .map_err(|e| format!("dial {addr}: {e}"))?;
                    }
                    peer
                } else {
                    let peer = peer_arg(req)?;
                    if !self.swarm.is_connected(&peer) {
                        self.swarm
                            .dial(peer)
                            .map_err(|e| format!("dial {peer}: {e}"))?;
                    }
                    peer
                };
                Ok(Ok(Op::Ping {
                    peer,
                    count,
                    rtts: Vec::new(),
                    last_error: None,
                }))
            }
            "peer_info" => {
                let peer = peer_arg(req)?;
                let info = self
                    .identified
                    .get(&peer)
                    .ok_or_else(|| format!("no identify info from {peer}"))?;
                Ok(Err(json!({
                    "protocols": info.protocols.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    "addrs": info.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "agent": info.agent_version,
                    "protocol_version": info.protocol_version,
                    "observed_addr": info.observed_addr.to_string(),
                })))
            }
            "add_peer" => {
                let peer = peer_arg(req)?;
                let addrs: Vec<Multiaddr> = match req.get("addr").and_then(Value::as_str) {
                    Some(text) => {
                        vec![text.parse().map_err(|e| format!("bad addr {text}: {e}"))?]
                    }
                    None => self
                        .identified
                        .get(&peer)
                        .map(|i| i.listen_addrs.clone())
                        .unwrap_or_default(),
                };
                if addrs.is_empty() {
                    return Err(format!("no address given or known for {peer}"));
                }
                let mut added = false;
                for addr in addrs {
                    let update = self.kad().add_address(&peer, without_p2p(&addr));
                    added |= matches!(update, RoutingUpdate::Success | RoutingUpdate::Pending);
                }
                Ok(Err(json!({ "added": added })))
            }
            "routing_table" => {
                let peers = self.routing_table();
                Ok(Err(json!({ "size": peers.len(), "peers": peers })))
            }
            "bootstrap" => {
                let qid = self
                    .kad()
                    .bootstrap()
                    .map_err(|e| format!("bootstrap: {e}"))?;
                Ok(Ok(Op::Bootstrap { qid }))
            }
            "provide" => {
                let key = RecordKey::new(&cid_multihash(str_arg(req, "cid")?)?);
                // rust reports StartProviding as done once its ADD_PROVIDER messages are
                // queued, before any is written: keep polling a moment before answering so the
                // records have reached the peers when the caller looks for them.
                let settle_ms = req.get("settle_ms").and_then(Value::as_u64).unwrap_or(500);
                let qid = self
                    .kad()
                    .start_providing(key)
                    .map_err(|e| format!("start_providing: {e}"))?;
                Ok(Ok(Op::Provide {
                    qid,
                    settle: Duration::from_millis(settle_ms),
                }))
            }
            "find_providers" => {
                let key = RecordKey::new(&cid_multihash(str_arg(req, "cid")?)?);
                let count = req
                    .get("count")
                    .and_then(Value::as_u64)
                    .unwrap_or(20)
                    .max(1) as usize;
                let qid = self.kad().get_providers(key.clone());
                Ok(Ok(Op::FindProviders {
                    qid,
                    key,
                    count,
                    found: Vec::new(),
                }))
            }
            "closest_peers" => {
                let key = b64_arg(req, "key_b64")?;
                let qid = self.kad().get_closest_peers(key);
                Ok(Ok(Op::Closest { qid }))
            }
            "put_value" => {
                let record = Record::new(b64_arg(req, "key_b64")?, b64_arg(req, "value_b64")?);
                let qid = self
                    .kad()
                    .put_record(record, Quorum::One)
                    .map_err(|e| format!("put_record: {e}"))?;
                Ok(Ok(Op::Put { qid }))
            }
            "get_value" => {
                let key = RecordKey::new(&b64_arg(req, "key_b64")?);
                let qid = self.kad().get_record(key);
                Ok(Ok(Op::Get { qid }))
            }
            other => Err(format!("unknown command {other}")),
        }
    }

    /// Completes the pending command if the state of the swarm already satisfies it.
    fn check_pending(&mut self) {
        let done = match &self.pending {
            Some(Pending {
                op: Op::Dial { peer, .. },
                ..
            }) => self.dial_done(peer),
            _ => false,
        };
        if done {
            self.finish(Ok(json!({})));
        }
    }

    fn on_timeout(&mut self) {
        let Some(p) = &self.pending else { return };
        if let Op::Settle { result } = &p.op {
            let result = result.clone();
            self.finish(Ok(result));
            return;
        }
        let mut message = format!("timed out after {} s", p.timeout_s);
        if let Op::Ping {
            last_error: Some(e),
            rtts,
            ..
        } = &p.op
        {
            message = format!("{message} ({} pings; last failure: {e})", rtts.len());
        }
        if let Op::FindProviders { found, .. } = &p.op {
            let found: Vec<String> = found.iter().map(|p| p.to_string()).collect();
            message = format!("{message} (providers found so far: {found:?})");
        }
        self.finish(Err(message));
    }

    fn providers_json(&mut self, found: &[PeerId], key: &RecordKey) -> Vec<Value> {
        found
            .iter()
            .map(|p| json!({ "peer_id": p.to_string(), "addrs": self.known_addrs(p, Some(key)) }))
            .collect()
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                eprintln!("listening on {address}");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                eprintln!("connected {peer_id} {connection_id} {endpoint:?}");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                eprintln!("connection to {peer_id} closed ({num_established} left): {cause:?}");
                if num_established == 0 {
                    self.identified.remove(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                eprintln!("dial {peer_id:?} {connection_id} failed: {error}");
                if let Some(Pending {
                    op: Op::Dial { connection, .. },
                    ..
                }) = &self.pending
                {
                    if *connection == connection_id {
                        self.finish(Err(format!("dial failed: {error}")));
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                eprintln!("incoming connection from {send_back_addr} failed: {error}");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => self.on_identify(event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => self.on_ping(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            _ => {}
        }
        self.check_pending();
    }

    fn on_identify(&mut self, event: identify::Event) {
        match event {
            identify::Event::Received { peer_id, info, .. } => {
                eprintln!(
                    "identify from {peer_id}: agent {:?} protocols {:?} listen {:?}",
                    info.agent_version, info.protocols, info.listen_addrs
                );
                if info.protocols.contains(&self.protocol) {
                    for addr in info.listen_addrs.iter().filter(|a| is_loopback(a)) {
                        let update = self.kad().add_address(&peer_id, without_p2p(addr));
                        eprintln!("kad add_address {peer_id} {addr}: {update:?}");
                    }
                }
                self.identified.insert(peer_id, info);
            }
            identify::Event::Error { peer_id, error, .. } => {
                eprintln!("identify with {peer_id} failed: {error}");
            }
            _ => {}
        }
    }

    fn on_ping(&mut self, event: ping::Event) {
        let Some(Pending {
            op:
                Op::Ping {
                    peer,
                    count,
                    rtts,
                    last_error,
                },
            ..
        }) = &mut self.pending
        else {
            return;
        };
        if event.peer != *peer {
            return;
        }
        match event.result {
            Ok(rtt) => {
                rtts.push(rtt.as_secs_f64() * 1000.0);
                if rtts.len() >= *count {
                    let rtts = rtts.clone();
                    self.finish(Ok(json!({ "rtt_ms": rtts })));
                }
            }
            Err(ping::Failure::Unsupported) => {
                self.finish(Err("the peer does not support ping".into()));
            }
            Err(e) => *last_error = Some(e.to_string()),
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        let (id, result, stats, step) = match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                stats,
                step,
            } => (id, result, stats, step),
            kad::Event::InboundRequest { request } => {
                eprintln!("kad inbound request: {request:?}");
                return;
            }
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer,
                addresses,
                ..
            } => {
                eprintln!("kad routing updated {peer} new={is_new_peer} {addresses:?}");
                return;
            }
            other => {
                eprintln!("kad event: {other:?}");
                return;
            }
        };
        let ours = self.pending.as_ref().and_then(|p| p.op.query()) == Some(id);
        if !ours {
            eprintln!("kad query {id:?} (not the pending command's) progressed: {result:?}");
            return;
        }
        eprintln!("kad query {id:?} step {step:?} stats {stats:?}: {result:?}");
        match result {
            QueryResult::Bootstrap(r) => {
                if step.last {
                    let outcome = match r {
                        Ok(ok) => json!({ "peer": ok.peer.to_string() }),
                        Err(e) => json!({ "error": e.to_string() }),
                    };
                    self.finish(Ok(
                        json!({ "result": outcome, "stats": stats_json(&stats) }),
                    ));
                }
            }
            QueryResult::StartProviding(r) => match r {
                Ok(_) => {
                    let result = json!({ "stats": stats_json(&stats) });
                    if let Some(p) = self.pending.as_mut() {
                        if let Op::Provide { settle, .. } = p.op {
                            // Still bounded by the command's own timeout.
                            p.deadline = p.deadline.min(Instant::now() + settle);
                            p.op = Op::Settle { result };
                        }
                    }
                }
                Err(e) => self.finish(Err(format!("start_providing: {e}"))),
            },
            QueryResult::GetProviders(r) => {
                let Some(Pending {
                    op:
                        Op::FindProviders {
                            found, count, key, ..
                        },
                    ..
                }) = &mut self.pending
                else {
                    return;
                };
                let (key, count) = (key.clone(), *count);
                let mut finished = step.last;
                let mut timed_out = false;
                match r {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        for p in providers {
                            if !found.contains(&p) {
                                found.push(p);
                            }
                        }
                        finished |= found.len() >= count;
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => finished = true,
                    Err(GetProvidersError::Timeout { .. }) => {
                        finished = true;
                        timed_out = true;
                    }
                }
                if finished {
                    let found = found.clone();
                    // Resolved while the query still runs, so the addresses carried in the
                    // GET_PROVIDERS answers are still reachable through Kademlia.
                    let providers = self.providers_json(&found, &key);
                    self.finish(Ok(
                        json!({ "providers": providers, "timed_out": timed_out }),
                    ));
                }
            }
            QueryResult::GetClosestPeers(r) => {
                let (peers, timed_out) = match r {
                    Ok(ok) => (ok.peers, false),
                    Err(GetClosestPeersError::Timeout { peers, .. }) => (peers, true),
                };
                let ids: Vec<String> = peers.iter().map(|p| p.peer_id.to_string()).collect();
                let addrs: serde_json::Map<String, Value> = peers
                    .iter()
                    .map(|p| {
                        let a: Vec<String> = p.addrs.iter().map(|a| a.to_string()).collect();
                        (p.peer_id.to_string(), json!(a))
                    })
                    .collect();
                self.finish(Ok(
                    json!({ "peers": ids, "addrs": addrs, "timed_out": timed_out }),
                ));
            }
            QueryResult::PutRecord(r) => match r {
                Ok(_) => self.finish(Ok(json!({ "stats": stats_json(&stats) }))),
                Err(e) => self.finish(Err(format!("put_record: {e}"))),
            },
            QueryResult::GetRecord(r) => match r {
                Ok(GetRecordOk::FoundRecord(peer_record)) => {
                    let from = peer_record.peer.map(|p| p.to_string());
                    self.finish(Ok(json!({
                        "value_b64": B64.encode(&peer_record.record.value),
                        "from": from,
                    })));
                }
                Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => {
                    self.finish(Ok(json!({ "value_b64": null })))
                }
                Err(GetRecordError::NotFound { .. }) => {
                    self.finish(Ok(json!({ "value_b64": null })))
                }
                Err(e) => self.finish(Ok(json!({ "value_b64": null, "error": e.to_string() }))),
            },
            other => eprintln!("kad: unexpected result for pending query: {other:?}"),
        }
    }
}

fn build_swarm(args: &Args) -> Result<Swarm<Behaviour>, Box<dyn std::error::Error>> {
    let protocol = StreamProtocol::try_from_owned(args.protocol.clone())?;
    let mode = args.mode;
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let mut config = kad::Config::new(protocol);
            config
                .set_query_timeout(Duration::from_secs(10))
                .set_replication_factor(NonZeroUsize::new(20).expect("20 > 0"))
                .set_provider_publication_interval(Some(TWELVE_HOURS))
                .set_record_ttl(Some(TWELVE_HOURS))
                .set_provider_record_ttl(Some(TWELVE_HOURS));
            let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), config);
            kad.set_mode(Some(mode));
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_string(), key.public())
                    .with_agent_version(format!("rust-libp2p-interop/{LIBP2P_VERSION}")),
            );
            // Ping every second so that `ping count=N` takes about N seconds.
            let ping =
                ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(1)));
            Behaviour {
                kad,
                identify,
                ping,
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let args = parse_args();
    let mut swarm =
        build_swarm(&args).unwrap_or_else(|e| usage(&format!("cannot build node: {e}")));
    let protocol = StreamProtocol::try_from_owned(args.protocol.clone()).expect("checked");
    if let Err(e) = swarm.listen_on(args.listen.clone()) {
        usage(&format!("cannot listen on {}: {e}", args.listen));
    }

    // Wait for the first listen address, then announce readiness.
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                eprintln!("listening on {address}");
                break;
            }
            SwarmEvent::ListenerError { error, .. } => usage(&format!("listener error: {error}")),
            other => eprintln!("before ready: {other:?}"),
        }
    }
    let local = *swarm.local_peer_id();
    let listen: Vec<Multiaddr> = swarm.listeners().cloned().collect();
    if args.external_addrs {
        // rust-libp2p puts only *external* addresses into its ADD_PROVIDER messages; on a
        // loopback test network nothing confirms one, so the listen addresses stand in.
        for a in &listen {
            swarm.add_external_address(a.clone());
        }
    }
    let mut protocols = vec![
        "/ipfs/id/1.0.0".to_string(),
        "/ipfs/id/push/1.0.0".to_string(),
        "/ipfs/ping/1.0.0".to_string(),
    ];
    if args.mode == Mode::Server {
        protocols.insert(0, args.protocol.clone());
    }
    emit(json!({
        "event": "ready",
        "peer_id": local.to_string(),
        "addrs": listen
            .iter()
            .map(|a| a.clone().with(Protocol::P2p(local)).to_string())
            .collect::<Vec<_>>(),
        "protocols": protocols,
        "agent": format!("rust-libp2p-interop/{LIBP2P_VERSION}"),
    }));

    let (tx, mut lines) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut app = App {
        swarm,
        protocol,
        pending: None,
        identified: HashMap::new(),
    };
    loop {
        let deadline = app.pending.as_ref().map(|p| p.deadline);
        tokio::select! {
            event = app.swarm.select_next_some() => app.on_event(event),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                if deadline.is_some() => app.on_timeout(),
            line = lines.recv(), if app.pending.is_none() => {
                let Some(line) = line else {
                    eprintln!("stdin closed; exiting");
                    std::process::exit(0);
                };
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let request: Value = match serde_json::from_str(line) {
                    Ok(v @ Value::Object(_)) => v,
                    Ok(_) | Err(_) => {
                        answer(&Value::Null, Err(format!("unknown command {line}")));
                        continue;
                    }
                };
                let id = request.get("id").cloned().unwrap_or(Value::Null);
                let cmd = request.get("cmd").and_then(Value::as_str).unwrap_or("").to_string();
                if id.is_null() {
                    answer(&id, Err(format!("unknown command {cmd} (request without id)")));
                    continue;
                }
                if cmd == "stop" || cmd == "quit" {
                    answer(&id, Ok(json!({})));
                    std::process::exit(0);
                }
                if let Some(result) = app.start(id.clone(), &request) {
                    answer(&id, result);
                }
            }
        }
    }
}
