// A js-libp2p node driven by JSON lines on stdin, for shardroute's interop tests.
// Prints {"event":"ready",...} once listening; answers one JSON line per command line.

// libp2p 3.x uses Promise.withResolvers, which Node 22 has and Node 20 lacks.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht')
const { multiaddr } = await import('@multiformats/multiaddr')
const { peerIdFromString } = await import('@libp2p/peer-id')
const { CID } = await import('multiformats/cid')
const readline = await import('node:readline')

function arg (name, fallback) {
  const i = process.argv.indexOf(name)
  return i >= 0 ? process.argv[i + 1] : fallback
}

const protocol = arg('--protocol', '/icn/kad/1.0.0')
const mode = arg('--mode', 'server')
const listen = arg('--listen', '/ip4/127.0.0.1/tcp/0')

const node = await createLibp2p({
  addresses: { listen: [listen] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  // Everything here runs on 127.0.0.1: allow dialing loopback.
  connectionGater: { denyDialMultiaddr: () => false },
  services: {
    identify: identify(),
    ping: ping(),
    // The default mapper drops loopback addresses, so loopback peers would never enter the table.
    dht: kadDHT({ protocol, clientMode: mode !== 'server', peerInfoMapper: passthroughMapper, allowQueryWithZeroPeers: true })
  }
})
await node.start()

const write = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const b64 = (u8) => Buffer.from(u8).toString('base64')
const unb64 = (s) => new Uint8Array(Buffer.from(s, 'base64'))

write({
  event: 'ready',
  peer_id: node.peerId.toString(),
  addrs: node.getMultiaddrs().map((a) => a.toString()),
  protocols: node.getProtocols()
})

async function handle (req) {
  const timeout = AbortSignal.timeout((req.timeout_s ?? 20) * 1000)
  const opts = { signal: timeout }
  switch (req.cmd) {
    case 'dial':
      await node.dial(multiaddr(req.addr), opts)
      return {}
    case 'hangup':
      // Closes every connection to the peer, so that a new dial runs the topology's
      // on-connect again (kad-dht admits a new contact only if its one ping answers in time).
      await node.hangUp(peerIdFromString(req.peer_id), opts)
      return {}
    case 'ping': {
      const target = req.addr ? multiaddr(req.addr) : peerIdFromString(req.peer_id)
      const rtts = []
      for (let i = 0; i < (req.count ?? 1); i++) rtts.push(await node.services.ping.ping(target, opts))
      return { rtt_ms: rtts }
    }
    case 'peer_info': {
      const peer = await node.peerStore.get(peerIdFromString(req.peer_id))
      return {
        protocols: peer.protocols,
        addrs: peer.addresses.map((a) => a.multiaddr.toString()),
        agent: peer.metadata.get('AgentVersion') ? new TextDecoder().decode(peer.metadata.get('AgentVersion')) : null
      }
    }
    case 'routing_table': {
      const table = node.services.dht.routingTable
      const peers = table.kb == null ? [] : [...table.kb.toIterable()].map((c) => c.peerId.toString())
      return { size: table.size, peers }
    }
    case 'bootstrap':
      await node.services.dht.refreshRoutingTable(opts)
      return {}
    case 'provide': {
      for await (const _ of node.services.dht.provide(CID.parse(req.cid), opts)) { /* drain */ }
      return {}
    }
    case 'find_providers': {
      const found = new Map()
      try {
        for await (const ev of node.services.dht.findProviders(CID.parse(req.cid), opts)) {
          if (ev.name === 'PROVIDER') {
            for (const p of ev.providers) {
              found.set(p.id.toString(), p.multiaddrs.map((a) => a.toString()))
            }
            if (found.size >= (req.count ?? 20)) break
          }
        }
      } catch (err) {
        if (found.size === 0) throw err
      }
      return { providers: [...found].map(([peerId, addrs]) => ({ peer_id: peerId, addrs })) }
    }
    case 'closest_peers': {
      const peers = []
      for await (const ev of node.services.dht.getClosestPeers(unb64(req.key_b64), opts)) {
        if (ev.name === 'FINAL_PEER') peers.push(ev.peer.id.toString())
      }
      return { peers }
    }
    case 'put_value': {
      for await (const _ of node.services.dht.put(unb64(req.key_b64), unb64(req.value_b64), opts)) { /* drain */ }
      return {}
    }
    case 'get_value': {
      let value = null
      try {
        for await (const ev of node.services.dht.get(unb64(req.key_b64), opts)) {
          if (ev.name === 'VALUE') value = b64(ev.value)
        }
      } catch (err) {
        if (value === null) throw err
      }
      return { value_b64: value }
    }
    case 'stop':
      return {}
    default:
      throw new Error(`unknown command ${req.cmd}`)
  }
}

const rl = readline.createInterface({ input: process.stdin })
let chain = Promise.resolve()
rl.on('line', (line) => {
  let req
  try { req = JSON.parse(line) } catch { req = undefined }
  // Anything but a JSON object with an id is refused with one error line (id null), like the
  // go and rust peers do; the peer keeps serving.
  if (req === null || typeof req !== 'object' || Array.isArray(req) || req.id == null) {
    const id = req !== null && typeof req === 'object' && !Array.isArray(req) ? (req.id ?? null) : null
    chain = chain.then(() => write({ id, ok: false, error: `unknown command ${line.trim()}` }))
    return
  }
  chain = chain.then(async () => {
    try {
      write({ id: req.id, ok: true, ...(await handle(req)) })
    } catch (err) {
      write({ id: req.id, ok: false, error: String(err?.message ?? err) })
    }
    if (req.cmd === 'stop') {
      await node.stop()
      process.exit(0)
    }
  })
})
rl.on('close', async () => { await chain; await node.stop(); process.exit(0) })
