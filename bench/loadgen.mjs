// A gRPC load generator for the benchmark, run as its own process (never on the server's event loop).
//
// Why not node:http2: its client spends about 100 µs of CPU per stream (objects, events, header
// conversion), so on a 2-core machine it became the ceiling of the bare server and, in open loop, the
// source of most of the measured tail (its own loop stalled while the server was idle). h2load is fast
// but sends one fixed body; the benchmark needs a mix of tenants, methods, paths and keys. So this speaks
// just enough HTTP/2 itself, over plain `net` sockets: the request's HEADERS block is constant (HPACK
// static-table and literal fields, encoded once), the DATA frame is a pre-encoded gRPC message from the
// corpus, and an answer is complete when a frame of its stream carries END_STREAM. Answers are not
// HPACK-decoded: the server's decisions come from its own /metrics; this counts completions, stream
// resets (errors) and times each request from the moment it was written.
//
//   node bench/loadgen.mjs --target 127.0.0.1:9191 --corpus corpus.bin --seconds 10
//        [--rate R]          open loop at R requests/s (latency percentiles at a fixed offered load)
//        [--deadline 200]    the grpc-timeout every request carries, in ms, as Envoy sends it; a request
//                            not answered by then counts as `timedOut` at the deadline (Envoy answers its
//                            client by failure_mode_allow at that moment) and frees its place in flight
//        [--reset-at-deadline]  also reset such a stream (RST_STREAM CANCEL), as Envoy does. Off by
//                            default: Node's HTTP/2 server (nghttp2's rapid-reset guard: a burst of 1000
//                            resets, then 33/s) answers more with GOAWAY(INTERNAL_ERROR), and this client
//                            does not reconnect as Envoy would
//        [--max-inflight 256]   open loop: requests in flight at most, as Envoy's circuit breaker
//                            (max_requests in envoy/envoy.yaml) keeps them; one due beyond it is not sent and
//                            counts as `overflow` (Envoy answers it at once by its failure mode)
//        [--offset 0]        the corpus entry to send first (the corpus wraps around); the bench's warm-up
//                            continues each run where the last one stopped, so every entry is sent once
//        [--connections 4 --streams 16]   closed loop: as fast as the server answers (64 in flight, as
//                                         a few Envoy workers would keep; deeper queues only add latency)
// Prints one JSON line: sent, completed, errors, achieved rate, latency percentiles, the generator's own
// CPU and event-loop delay (if those are high, the latency figures measure the generator, not the server).
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
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
    deadline: { type: 'string', default: '200' },
    'max-inflight': { type: 'string', default: '256' },
    'reset-at-deadline': { type: 'boolean', default: false },
    offset: { type: 'string', default: '0' },
  },
});

// Corpus file: repeated [u32 length][gRPC frame (5-byte prefix + CheckRequest)].
function loadCorpus(file) {
  const buf = readFileSync(file);
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
const [host, portText] = values.target.split(':');

// --- HTTP/2 framing (RFC 9113) and the one HPACK block (RFC 7541) this client ever sends.
const TYPE = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8 };
const END_STREAM = 0x1;
const END_HEADERS = 0x4;
const ACK = 0x1;
const MAX_WINDOW = 2 ** 31 - 1;

function frameHeader(length, type, flags, streamId) {
  const h = Buffer.alloc(9);
  h.writeUIntBE(length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(streamId, 5);
  return h;
}

function hpackString(s) {
  const b = Buffer.from(s, 'latin1');
  if (b.length >= 127) throw new Error('header too long for this encoder');
  return Buffer.concat([Buffer.from([b.length]), b]);
}

const authority = `${host}:${portText}`;
const HEADER_BLOCK = Buffer.concat([
  Buffer.from([0x83]), // :method POST (static index 3)
  Buffer.from([0x86]), // :scheme http (static index 6)
  Buffer.from([0x04]), hpackString('/envoy.service.auth.v3.Authorization/Check'), // :path, literal, name index 4
  Buffer.from([0x01]), hpackString(authority), // :authority, literal, name index 1
  Buffer.from([0x0f, 0x10]), hpackString('application/grpc'), // content-type, literal, name index 31
  Buffer.from([0x00]), hpackString('te'), hpackString('trailers'), // te, literal with a new name
  // Envoy's ext_authz filter sends its timeout (200 ms by default) as the call's deadline.
  Buffer.from([0x00]), hpackString('grpc-timeout'), hpackString(`${Number(values.deadline)}m`),
]);

// SETTINGS: no push, the largest stream window; then the largest connection window.
const PREFACE = Buffer.concat([
  Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'),
  frameHeader(12, TYPE.SETTINGS, 0, 0),
  Buffer.from([0x00, 0x02, 0, 0, 0, 0, 0x00, 0x04]),
  (() => { const b = Buffer.alloc(4); b.writeUInt32BE(MAX_WINDOW); return b; })(),
  frameHeader(4, TYPE.WINDOW_UPDATE, 0, 0),
  (() => { const b = Buffer.alloc(4); b.writeUInt32BE(MAX_WINDOW - 65_535); return b; })(),
]);

let next = Number(values.offset);
let sent = 0;
let completed = 0;
let errors = 0;
let timedOut = 0;
let overflow = 0;
let inFlight = 0;
const deadlineMs = Number(values.deadline);
const maxInFlight = Number(values['max-inflight']);
const resetAtDeadline = values['reset-at-deadline'];
const latencies = [];
let measuring = false;
let stopping = false;

class Connection {
  constructor(onAnswer) {
    this.onAnswer = onAnswer;
    this.nextId = 1;
    this.started = new Map(); // stream id -> start time (ms)
    this.pending = null;
    this.received = 0;
    this.socket = net.connect({ host, port: Number(portText), noDelay: true });
    this.socket.on('error', (err) => fail(`connection: ${err.message}`));
    this.ready = new Promise((resolve) => this.socket.once('connect', resolve));
    this.socket.write(PREFACE);
    this.socket.on('data', (chunk) => {
      // Requests sent while handling this chunk (closed loop) leave in one write.
      this.socket.cork();
      this.read(chunk);
      this.socket.uncork();
    });
  }

  send() {
    const frame = frames[next++ % frames.length];
    const id = this.nextId;
    this.nextId += 2;
    this.socket.write(Buffer.concat([
      frameHeader(HEADER_BLOCK.length, TYPE.HEADERS, END_HEADERS, id),
      HEADER_BLOCK,
      frameHeader(frame.length, TYPE.DATA, END_STREAM, id),
      frame,
    ]));
    this.started.set(id, performance.now());
    inFlight++;
    sent++;
  }

  /** What Envoy does at the ext_authz timeout: gives up on the streams still unanswered (oldest first). */
  expire(now) {
    for (const [id, t0] of this.started) {
      if (now - t0 < deadlineMs) break; // the map is in send order
      if (resetAtDeadline) {
        const code = Buffer.alloc(4);
        code.writeUInt32BE(0x8); // CANCEL
        this.socket.write(Buffer.concat([frameHeader(4, TYPE.RST_STREAM, 0, id), code]));
      }
      this.started.delete(id);
      inFlight--;
      if (measuring) {
        timedOut++;
        latencies.push(deadlineMs); // the client behind Envoy got its answer (failure mode) at the deadline
      }
      this.onAnswer?.(this);
    }
  }

  read(chunk) {
    let buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    let off = 0;
    while (buf.length - off >= 9) {
      const len = buf.readUIntBE(off, 3);
      if (buf.length - off < 9 + len) break;
      const type = buf[off + 3];
      const flags = buf[off + 4];
      const id = buf.readUInt32BE(off + 5) & 0x7fffffff;
      const payload = buf.subarray(off + 9, off + 9 + len);
      off += 9 + len;
      if (type === TYPE.SETTINGS && !(flags & ACK)) this.socket.write(frameHeader(0, TYPE.SETTINGS, ACK, 0));
      else if (type === TYPE.PING && !(flags & ACK)) this.socket.write(Buffer.concat([frameHeader(8, TYPE.PING, ACK, 0), payload]));
      else if (type === TYPE.GOAWAY) fail(`server sent GOAWAY (error code ${payload.readUInt32BE(4)})`);
      else if (type === TYPE.RST_STREAM) this.finish(id, true);
      else if ((type === TYPE.HEADERS || type === TYPE.DATA) && flags & END_STREAM) this.finish(id, false);
      if (type === TYPE.DATA && len > 0) {
        // Give back what the answers used of the connection window, in large steps.
        this.received += len;
        if (this.received > 1 << 24) {
          const inc = Buffer.alloc(4);
          inc.writeUInt32BE(this.received);
          this.socket.write(Buffer.concat([frameHeader(4, TYPE.WINDOW_UPDATE, 0, 0), inc]));
          this.received = 0;
        }
      }
    }
    this.pending = off < buf.length ? buf.subarray(off) : null;
  }

  finish(id, failed) {
    const t0 = this.started.get(id);
    if (t0 === undefined) return; // answered after Envoy's deadline: already counted
    this.started.delete(id);
    inFlight--;
    if (failed) errors++;
    else if (measuring) {
      completed++;
      latencies.push(performance.now() - t0);
    }
    this.onAnswer?.(this);
  }
}

function fail(msg) {
  process.stderr.write(`loadgen: ${msg}\n`);
  process.exit(2);
}

const conns = [];
for (let i = 0; i < nConn; i++) {
  // Closed loop: every answer sends the next request on its connection.
  conns.push(new Connection(rate === null ? (c) => !stopping && c.send() : null));
}
await Promise.all(conns.map((c) => c.ready));
const expiry = setInterval(() => {
  const now = performance.now();
  for (const c of conns) {
    c.socket.cork();
    c.expire(now);
    c.socket.uncork();
  }
}, 5);

const loopDelay = monitorEventLoopDelay({ resolution: 1 });
const startWall = Date.now();
let measureStart = Date.now();
let cpuAtStart = process.cpuUsage();
setTimeout(() => {
  measuring = true;
  measureStart = Date.now();
  cpuAtStart = process.cpuUsage();
  loopDelay.enable();
}, warmupS * 1000);

if (rate === null) {
  for (const c of conns) {
    c.socket.cork();
    for (let i = 0; i < perConn; i++) c.send();
    c.socket.uncork();
  }
} else {
  // Open loop: send on schedule whatever the answers do, so queueing shows up in latency. The schedule is
  // kept against the clock, not per tick: a late tick sends what the lateness owes, so the offered rate
  // holds even when this process's own loop stalls.
  const t0 = performance.now();
  let fired = 0;
  const timer = setInterval(() => {
    if (stopping) return clearInterval(timer);
    const due = Math.floor(((performance.now() - t0) * rate) / 1000);
    for (const c of conns) c.socket.cork();
    while (fired < due) {
      if (inFlight < maxInFlight) conns[fired % conns.length].send();
      else if (measuring) overflow++;
      fired++;
    }
    for (const c of conns) c.socket.uncork();
  }, 1);
}

await new Promise((r) => setTimeout(r, (warmupS + seconds) * 1000));
measuring = false;
stopping = true;
clearInterval(expiry);
loopDelay.disable();
const elapsed = (Date.now() - measureStart) / 1000;
const cpu = process.cpuUsage(cpuAtStart);
await new Promise((r) => setTimeout(r, 300));
for (const c of conns) c.socket.destroy();

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
    timedOut,
    overflow,
    ratePerSecond: Math.round(completed / elapsed),
    latencyMs: { p50: pct(50), p90: pct(90), p99: pct(99), p999: pct(99.9), max: latencies.at(-1) ?? null },
    generator: {
      cpuShare: Number(((cpu.user + cpu.system) / 1e6 / elapsed).toFixed(3)),
      loopDelayP99Ms: Number((loopDelay.percentile(99) / 1e6).toFixed(2)),
    },
    wallSeconds: (Date.now() - startWall) / 1000,
  })}\n`,
);
process.exit(0);
