// A gRPC load generator for the benchmark, run as its own process (never on the server's event loop).
// h2load drives gRPC too, but sends one fixed body; the benchmark needs a mix of tenants, methods, paths
// and keys, so this sends pre-encoded gRPC frames round-robin over raw HTTP/2 streams.
//
//   node bench/loadgen.mjs --target 127.0.0.1:9191 --corpus bench/.corpus.bin --seconds 10
//        [--rate R]          open loop at R requests/s (latency percentiles at a fixed offered load)
//        [--connections 4 --streams 16]   closed loop: as fast as the server answers (64 in flight, as
//                                         a few Envoy workers would keep; deeper queues only add latency)
// Prints one JSON line: sent, completed, errors, grpc status counts, achieved rate, latency percentiles.
import http2 from 'node:http2';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    target: { type: 'string', default: '127.0.0.1:9191' },
    corpus: { type: 'string' },
    seconds: { type: 'string', default: '10' },
    rate: { type: 'string' },
    connections: { type: 'string', default: '4' },
    streams: { type: 'string', default: '16' },
    warmup: { type: 'string', default: '1' },
  },
});

// Corpus file: repeated [u32 length][gRPC frame].
function loadCorpus(path) {
  const buf = readFileSync(path);
  const frames = [];
  for (let off = 0; off < buf.length; ) {
    const len = buf.readUInt32BE(off);
    frames.push(buf.subarray(off + 4, off + 4 + len));
    off += 4 + len;
  }
  return frames;
}

const frames = loadCorpus(values.corpus);
const seconds = Number(values.seconds);
const warmupS = Number(values.warmup);
const rate = values.rate ? Number(values.rate) : null;
const nConn = Number(values.connections);
const perConn = Number(values.streams);
const HEADERS = {
  ':method': 'POST',
  ':path': '/envoy.service.auth.v3.Authorization/Check',
  'content-type': 'application/grpc',
  te: 'trailers',
};

const sessions = [];
for (let i = 0; i < nConn; i++) {
  const s = http2.connect(`http://${values.target}`, { settings: { initialWindowSize: 1 << 24 } });
  s.on('error', () => {});
  sessions.push(s);
}
await Promise.all(sessions.map((s) => new Promise((r) => (s.connecting ? s.once('connect', r) : r()))));

let next = 0;
let sent = 0;
let completed = 0;
let errors = 0;
const statuses = new Map();
const latencies = [];
let measuring = false;
let stopping = false;

function fire(session, onDone) {
  const frame = frames[next++ % frames.length];
  const t0 = process.hrtime.bigint();
  sent++;
  const req = session.request(HEADERS, { endStream: false });
  let grpcStatus = 'none';
  req.on('response', (h) => {
    if (h['grpc-status'] !== undefined) grpcStatus = String(h['grpc-status']);
  });
  req.on('trailers', (t) => {
    grpcStatus = String(t['grpc-status']);
  });
  req.on('data', () => {});
  req.on('error', () => {
    errors++;
    onDone?.();
  });
  req.on('end', () => {
    if (measuring) {
      completed++;
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
      statuses.set(grpcStatus, (statuses.get(grpcStatus) ?? 0) + 1);
    }
    onDone?.();
  });
  req.end(frame);
}

const startWall = Date.now();
setTimeout(() => {
  measuring = true;
}, warmupS * 1000);
let measureStart = 0;
setTimeout(() => (measureStart = Date.now()), warmupS * 1000);

if (rate === null) {
  // Closed loop: keep `streams` requests in flight on each connection.
  for (const s of sessions) {
    const loop = () => {
      if (!stopping) fire(s, loop);
    };
    for (let i = 0; i < perConn; i++) loop();
  }
} else {
  // Open loop: send on schedule whatever the answers do, so queueing shows up in latency.
  const tickMs = 2;
  let due = 0;
  const timer = setInterval(() => {
    if (stopping) return clearInterval(timer);
    due += (rate * tickMs) / 1000;
    while (due >= 1) {
      fire(sessions[next % sessions.length]);
      due -= 1;
    }
  }, tickMs);
}

await new Promise((r) => setTimeout(r, (warmupS + seconds) * 1000));
measuring = false;
stopping = true;
const elapsed = (Date.now() - measureStart) / 1000;
await new Promise((r) => setTimeout(r, 300));
for (const s of sessions) s.destroy();

latencies.sort((a, b) => a - b);
const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] : null);
process.stdout.write(
  `${JSON.stringify({
    mode: rate === null ? 'closed' : 'open',
    offeredRate: rate,
    seconds: elapsed,
    sent,
    completed,
    errors,
    ratePerSecond: Math.round(completed / elapsed),
    grpcStatus: Object.fromEntries(statuses),
    latencyMs: { p50: pct(50), p90: pct(90), p99: pct(99), p999: pct(99.9), max: latencies.at(-1) ?? null },
    wallSeconds: (Date.now() - startWall) / 1000,
  })}\n`,
);
process.exit(0);
