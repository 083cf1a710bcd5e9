// Helia's Delegated Routing V1 HTTP API client, as a libp2p node or Helia uses it:
//   node client.mjs URL providers CID [FILTER_ADDRS]   -> ContentRouting.findProviders
//   node client.mjs URL peers PEER_ID                  -> PeerRouting.findPeer
// Prints one JSON line per provider or peer ({"id", "addrs", "protocols"}), then
// {"done": true, "count": N}; an error is {"error": "..."} and exit code 1.

// The client uses Promise.withResolvers, which Node 22 has and Node 20 lacks.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const {
  delegatedRoutingV1HttpApiClient,
  delegatedRoutingV1HttpApiClientContentRouting,
  delegatedRoutingV1HttpApiClientPeerRouting
} = await import('@helia/delegated-routing-v1-http-api-client')
const { defaultLogger } = await import('@libp2p/logger')
const { peerIdFromCID, peerIdFromString } = await import('@libp2p/peer-id')
const { CID } = await import('multiformats/cid')

const [url, command, arg, filter] = process.argv.slice(2)
const init = { url, cacheTTL: 0, timeout: 30_000 }
const components = { logger: defaultLogger() }
const print = (value) => process.stdout.write(JSON.stringify(value) + '\n')

try {
  let count = 0
  if (command === 'providers') {
    const routing = delegatedRoutingV1HttpApiClientContentRouting(init)(components)
    await routing.start()
    const options = filter == null ? {} : { filterAddrs: filter.split(',') }
    for await (const provider of routing.findProviders(CID.parse(arg), options)) {
      count++
      print({ id: provider.id.toString(), addrs: provider.multiaddrs.map(String) })
    }
    await routing.stop()
  } else if (command === 'peers') {
    const routing = delegatedRoutingV1HttpApiClientPeerRouting(init)(components)
    await routing.start()
    try {
      const peer = await routing.findPeer(peerIdFromString(arg))
      count++
      print({ id: peer.id.toString(), addrs: peer.multiaddrs.map(String) })
    } catch (err) {
      if (err.name !== 'NotFoundError') throw err
    }
    await routing.stop()
  } else if (command === 'records') {
    // The plain client: the records as the server wrote them (Protocols included).
    const client = delegatedRoutingV1HttpApiClient(init)(components)
    await client.start()
    for await (const record of client.getProviders(CID.parse(arg))) {
      count++
      print({ id: peerIdFromCID(record.ID).toString(), addrs: record.Addrs.map(String), protocols: record.Protocols })
    }
    await client.stop()
  } else {
    throw new Error(`unknown command ${command}`)
  }
  print({ done: true, count })
} catch (err) {
  print({ error: `${err.name}: ${err.message}` })
  process.exitCode = 1
}
