// Fuzzes the Check over real gRPC: the whole server in-process on a real port (real Redis, real Postgres),
// fed random and mutated CheckRequests built from real-shaped ones (`buildCheckRequest`, as Envoy fills them)
// for a bounded time. Mutations: equivalent spellings of metered paths (case, percent-encoding, `..`, `//`,
// `\`, `%2F`, trailing slash, query, fragment), junk paths, known/unknown/suspended/expired/malformed keys in
// every header and placement (case-variant names, duplicates, both key headers, padding, `header_map` with
// `value` or `raw_value`, or both maps), hundreds of headers, huge values, odd bytes, junk request ids,
// unknown methods, a request body, and byte-level corruption of the encoded message.
//
// For every answer: no gRPC error (except INTERNAL for bytes that do not decode at all, which Envoy never
// sends), in time for its 250 ms deadline, a well-formed denial or allowance; an allowance only for a tenant
// whose valid key the request carried, metered exactly as README "Path normalisation" says; and in the end
// the capped tenant never past its limits, Redis holding exactly the reservations that were answered
// allowed, no unhandled rejection, every log line one JSON object, no key in any log line.
//
//   FUZZ_SECONDS   how long to fuzz (default 10, as in CI); e.g. FUZZ_SECONDS=300 for a longer run
//   FUZZ_SEED      replays a run (the seed is printed at the start and with every failure)
import { Redis } from 'ioredis';
import * as grpc from '@grpc/grpc-js';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCheckRequest } from '../../src/cli/check-command.js';
import { EndpointMatcher, normalizePath } from '../../src/core/path.js';
import { periodFor } from '../../src/core/period.js';
import type { RawHttpRequest } from '../../src/core/request.js';
import type { CheckResponseMessage } from '../../src/grpc/check-mapping.js';
import { createCheckRequestDecoder } from '../../src/grpc/check-request-decoder.js';
import { authorizationService, httpStatusNumber } from '../../src/grpc/protos.js';
import { startHarness, type Harness } from '../helpers/harness.js';
import { seededRandom } from '../helpers/prng.js';
import { createTestDatabase, hasPostgres, hasRedis, testPrefix, TEST_REDIS_URL, dropKeysWithPrefix } from '../helpers/services.js';

const services = (await hasRedis()) && (await hasPostgres());
const SECONDS = Number(process.env.FUZZ_SECONDS ?? 10);
const SEED = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const CONCURRENCY = Number(process.env.FUZZ_CONCURRENCY ?? 16);
const BATCH = 128;
const DEADLINE_MS = 250; // Envoy's, as in envoy/envoy.yaml
const TENANTS = path.resolve('test/fixtures/fuzz/tenants.yaml');

const KEYS = {
  open: 'ul_fuzz_OPEN_KEY_000001',
  capped: 'ul_fuzz_CAPPED_KEY_0001',
  suspended: 'ul_fuzz_SUSPENDED_KEY_1',
  expired: 'ul_fuzz_EXPIRED_KEY_001',
} as const;
/** Keys that may be allowed, and the tenant an allowance must then name. */
const VALID: ReadonlyMap<string, string> = new Map([
  [KEYS.open, 'fuzz_open'],
  [KEYS.capped, 'fuzz_capped'],
]);
const CAPPED_LIMITS = { reads: 20, total: 8, endpoints: { '/verify': 5, '/files/*': 5, '/v1/extract': 5 } as Record<string, number> };
const matcher = new EndpointMatcher(['/verify', '/files/*', '/v1/extract']);

const METERED = ['/verify', '/v1/extract', '/files', '/files/report.pdf', '/files/big/x'];
const UNMETERED = ['/usage', '/v1/items', '/verify2', '/verifyx', '/filesystem', '/v1/extractor', '/v1', '/', '/v1/usage'];

const Check = authorizationService().service.Check!;
const serialize = (m: unknown): Buffer => Check.requestSerialize(m);
const serverDecode = createCheckRequestDecoder();

// ---- case generation -------------------------------------------------------------------------------------

type Rnd = () => number;
const pick = <T>(r: Rnd, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: Rnd, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
const chance = (r: Rnd, p: number) => r() < p;

function randomCase(r: Rnd, s: string): string {
  return [...s].map((c) => (chance(r, 0.5) ? c.toUpperCase() : c)).join('');
}

function randomString(r: Rnd, len: number, alphabet: 'ascii' | 'unicode' | 'bytes'): string {
  let out = '';
  for (let i = 0; i < len; i++) {
    if (alphabet === 'ascii') out += String.fromCharCode(int(r, 0x20, 0x7e));
    else if (alphabet === 'bytes') out += String.fromCharCode(int(r, 0, 0xff));
    else out += String.fromCodePoint(pick(r, [int(r, 0, 0x7f), int(r, 0x80, 0x7ff), int(r, 0x800, 0xd7ff), int(r, 0x10000, 0x10ffff)]));
  }
  return out;
}

const pct = (c: string, r: Rnd) => {
  const h = c.charCodeAt(0).toString(16).padStart(2, '0');
  return `%${chance(r, 0.5) ? h : h.toUpperCase()}`;
};

/** A spelling of a clean path that README's rules make equivalent to it. */
function variant(r: Rnd, clean: string): string {
  const segments = clean === '/' ? [] : clean.slice(1).split('/');
  const sep = () =>
    pick(r, ['/', '/', '//', '\\', '%2F', '%2f', '%5C', '/./', '/%2e/', `/${randomString(r, int(r, 1, 4), 'ascii').replace(/[/\\?#%.]/g, 'q')}/../`, '/zz/%2e%2e/']);
  let out = pick(r, ['', '', '/..', '/../..', '/%2e%2e', '\\', '/.']);
  for (const s of segments) {
    const spelled = [...s].map((c) => (chance(r, 0.2) ? pct(chance(r, 0.5) ? c.toUpperCase() : c, r) : chance(r, 0.3) ? c.toUpperCase() : c)).join('');
    out += sep() + spelled;
  }
  if (segments.length === 0) out += '/';
  out += pick(r, ['', '', '/', '//', '/.', `?${randomString(r, int(r, 0, 20), 'ascii')}`, `#${randomString(r, int(r, 0, 10), 'ascii')}`, '?x=/../verify', '#/files']);
  return out;
}

function junkPath(r: Rnd): string {
  switch (int(r, 0, 9)) {
    case 0: return randomString(r, int(r, 0, 60), 'unicode');
    case 1: return `/${randomString(r, int(r, 0, 60), 'bytes')}`;
    case 2: return `/${'a/'.repeat(int(r, 1, 4000))}`;
    case 3: return `/${'p'.repeat(int(r, 8180, 8200))}`;
    case 4: return Array.from({ length: int(r, 1, 30) }, () => pick(r, ['%', '%2', '%25', '%2525', '%3F', '%23', '%C3', '%ZZ', '%00', '..', '.', '/', '\\', 'v', 'VERIFY'])).join('');
    case 5: return pick(r, ['', '*', 'verify', 'http://evil.example/verify', '/verify\r\nx-api-key: k', '/verify\u0000', '/%00verify', '/ver ify', '/verify;jsessionid=1', '/verify%20']);
    case 6: return `/verify/${randomString(r, int(r, 1, 10), 'unicode')}`;
    case 7: return `/files%2F..%2F..%2F${pick(r, ['verify', 'usage', 'v1/extract'])}`;
    case 8: return `/${'%2e%2e/'.repeat(int(r, 1, 50))}${pick(r, METERED).slice(1)}`;
    default: return variant(r, pick(r, UNMETERED));
  }
}

interface FuzzCase {
  readonly n: number;
  readonly label: string;
  readonly bytes: Buffer;
  /** The path this case means by construction (a variant's clean path), or null for junk. */
  readonly meant: string | null;
  /** Every header value the request carries, wherever it put it (for the key oracle). */
  readonly values: readonly string[];
}

function keyFor(r: Rnd): { key: string | null; kind: string } {
  const kind = pick(r, ['open', 'open', 'capped', 'capped', 'suspended', 'expired', 'unknown', 'malformed', 'none', 'near']);
  switch (kind) {
    case 'open': case 'capped': case 'suspended': case 'expired': return { key: KEYS[kind], kind };
    case 'unknown': return { key: `ul_fuzz_${randomString(r, int(r, 4, 40), 'ascii').replace(/[\s,]/g, '_')}`, kind };
    case 'malformed': return { key: pick(r, [`${KEYS.open} x`, `${KEYS.open}\u0000`, 'k'.repeat(300), `${KEYS.open}\n`, randomString(r, 20, 'unicode'), `é${KEYS.capped}`]), kind };
    case 'near': return { key: pick(r, [KEYS.open.toLowerCase(), KEYS.open.slice(0, -1), `${KEYS.open}1`, `${KEYS.capped}=`, KEYS.open.toUpperCase()]), kind };
    default: return { key: null, kind };
  }
}

function generate(r: Rnd, n: number): FuzzCase {
  const labels: string[] = [];
  // Path.
  let meant: string | null = null;
  let p: string;
  const pathKind = int(r, 0, 9);
  if (pathKind < 5) {
    meant = pick(r, METERED);
    p = variant(r, meant);
    labels.push('metered-variant');
  } else if (pathKind < 7) {
    meant = pick(r, UNMETERED);
    p = variant(r, meant);
    labels.push('unmetered-variant');
  } else {
    p = junkPath(r);
    labels.push('junk-path');
  }
  // Method.
  const method = chance(r, 0.85)
    ? pick(r, ['GET', 'POST', 'HEAD', 'GET', 'POST', 'get', 'post', 'Head', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'])
    : pick(r, ['PROPFIND', 'PURGE', 'X-CUSTOM', 'G ET', '', 'A'.repeat(40), randomString(r, 5, 'unicode'), 'CONNECT', 'TRACE']);
  if (!['GET', 'POST', 'HEAD'].includes(method)) labels.push('odd-method');

  // Keys and where they go.
  const a = keyFor(r);
  const b = keyFor(r);
  const key = a.key;
  const headers: Array<[string, string]> = [];
  const placement = int(r, 0, 10);
  const pad = (k: string) => `${pick(r, ['', ' ', '  ', '\t'])}${k}${pick(r, ['', ' ', '\t'])}`;
  if (key !== null) {
    switch (placement) {
      case 0: case 1: headers.push([randomCase(r, 'x-api-key'), key]); labels.push('x-api-key'); break;
      case 2: headers.push(['authorization', `${pick(r, ['Bearer', 'bearer', 'BEARER', 'BeArEr'])}${pick(r, [' ', '  ', '\t'])}${key}`]); labels.push('bearer'); break;
      case 3: headers.push(['authorization', `Basic ${Buffer.from(`u:${key}`).toString('base64')}`]); labels.push('basic'); break;
      case 4: headers.push(['x-api-key', key], ['authorization', `Bearer ${b.key ?? ''}`]); labels.push('both-headers'); break;
      case 5: headers.push(['x-api-key', key], ['X-API-KEY', b.key ?? '']); labels.push('duplicate-key'); break;
      case 6: headers.push(['x-api-key', pad(key)]); labels.push('padded-key'); break;
      case 7: headers.push(['x-api-key', `${key},${b.key ?? key}`]); labels.push('comma-keys'); break;
      case 8: headers.push(['x-api-key', ''], ['authorization', `Bearer ${key}`]); labels.push('empty-x-api-key'); break;
      case 9: headers.push(['x-api-key', `${key}${pick(r, ['\r\n', '\u0000', ';', '%00', ' extra'])}`]); labels.push('key-suffix'); break;
      default: headers.push([randomCase(r, 'x-api-key'), key]); labels.push('x-api-key');
    }
    labels.push(`key:${a.kind}`);
  } else {
    labels.push('no-key');
  }

  // Other headers.
  const requestId = chance(r, 0.8)
    ? `fuzz-${SEED}-${n}`
    : pick(r, ['', 'id\nwith\nnewlines', '{"level":60,"msg":"forged"}', 'x'.repeat(int(r, 129, 10_000)), randomString(r, 20, 'unicode'), 'a"b\\c', `"},"tenantId":"fuzz_open`]);
  if (requestId !== `fuzz-${SEED}-${n}`) labels.push('odd-request-id');
  const extra: Array<[string, string]> = [];
  if (chance(r, 0.15)) {
    // Envoy's default limit is 100 headers (max_headers_count): up to five times as many.
    const count = int(r, 50, 500);
    for (let i = 0; i < count; i++) extra.push([`x-fuzz-${i}`, randomString(r, int(r, 0, 40), 'ascii')]);
    labels.push('many-headers');
  }
  if (chance(r, 0.1)) {
    // Envoy's default limit is 60 KiB of headers in all (max_request_headers_kb): up to half again as much.
    extra.push(['x-huge', 'h'.repeat(int(r, 8_000, 96_000))]);
    labels.push('huge-header');
  }
  if (chance(r, 0.2)) {
    extra.push([pick(r, ['x-odd', 'X-Odd', 'x-tenant-id', 'x-tenant-tier', 'x-usage-limiter-degraded']), randomString(r, int(r, 1, 60), pick(r, ['unicode', 'bytes'] as const))]);
    labels.push('odd-bytes');
  }
  if (chance(r, 0.1)) {
    extra.push([':path', variant(r, pick(r, METERED))]);
    labels.push('path-header-differs');
  }

  const req = buildCheckRequest({ key: undefined, method, path: p, target: '', headers: [...headers, ...extra], requestId: requestId || undefined, timeoutMs: 0 }) as {
    attributes: { request: { http: Record<string, unknown> } };
  };
  const http = req.attributes.request.http;
  if (requestId === '') delete (http.headers as Record<string, string>)['x-request-id'];
  // buildCheckRequest lower-cases names; put the raw ones back (Envoy lower-cases, but a fuzzer need not).
  const map = http.headers as Record<string, string>;
  for (const [k, v] of headers) {
    if (k !== k.toLowerCase()) {
      // Both spellings may now be present in the map, which is what a sloppy client of ours might send.
      map[k] = v;
    }
  }
  // Where the headers travel: the `headers` map, `header_map` with `value` or `raw_value`, or both.
  const repr = int(r, 0, 5);
  const entries = Object.entries(map);
  if (repr === 1 || repr === 2 || repr === 3) {
    const list: Array<{ key: string; value?: string; raw_value?: Buffer }> = [];
    for (const [k, v] of entries) {
      if (repr === 1) list.push({ key: k, value: v });
      else if (repr === 2) list.push({ key: k, raw_value: Buffer.from(v, 'utf8') });
      else list.push(chance(r, 0.5) ? { key: k, value: v } : { key: k, raw_value: Buffer.from(v, 'latin1') });
    }
    // header_map may repeat a name, as Envoy does for repeated headers.
    if (chance(r, 0.3) && key !== null) list.push({ key: 'x-api-key', value: b.key ?? key });
    delete http.headers;
    http.header_map = { headers: list };
    labels.push(['header_map', 'header_map-raw', 'header_map-mixed'][repr - 1]!);
  } else if (repr === 4) {
    http.header_map = { headers: [{ key: 'x-api-key', value: b.key ?? '' }] };
    labels.push('both-maps');
  }
  if (chance(r, 0.1)) {
    http.body = `{"card":"4242424242424242","apiKey":"${KEYS.open}"}`;
    http.raw_body = Buffer.from('raw body bytes');
    labels.push('body');
  }
  let bytes = serialize(req);
  if (chance(r, 0.07)) {
    bytes = Buffer.from(bytes);
    const flips = int(r, 1, 8);
    for (let i = 0; i < flips; i++) {
      const op = int(r, 0, 2);
      const at = int(r, 0, bytes.length - 1);
      if (op === 0) bytes[at] = int(r, 0, 255);
      else if (op === 1) bytes = bytes.subarray(0, at);
      else bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from([int(r, 0, 255)]), bytes.subarray(at)]);
    }
    labels.push('corrupted-bytes');
    // Corrupted bytes can change the path itself (a broken length prefix swallows the next field), so the
    // variant's intended meaning no longer holds: judge by the documented rules on the path as received.
    meant = null;
  }

  // Every value the request carries anywhere (decoded the way the server decodes raw_value).
  const values: string[] = [];
  for (const v of Object.values(map)) values.push(v);
  const hm = (http.header_map as { headers?: Array<{ value?: string; raw_value?: Buffer }> } | undefined)?.headers ?? [];
  for (const h of hm) values.push(h.value ?? new TextDecoder().decode(h.raw_value ?? new Uint8Array()));
  return { n, label: labels.join(' '), bytes, meant, values };
}

/** Tenants whose valid key the request carried as a whole header value or as a Bearer token. */
function carriedTenants(c: FuzzCase): Set<string> {
  const out = new Set<string>();
  for (const v of c.values) {
    const bearer = /^\s*bearer\s+(.*)$/i.exec(v)?.[1];
    for (const candidate of [v.trim(), bearer?.trim()]) {
      const t = candidate === undefined ? undefined : VALID.get(candidate);
      if (t !== undefined) out.add(t);
    }
  }
  return out;
}

// ---- the run ---------------------------------------------------------------------------------------------

interface Observed {
  cases: number;
  grpcErrors: number;
  allowed: number;
  byStatus: Map<number, number>;
  latencies: number[];
  violations: string[];
  /** Allowed reservations seen, by tenant and endpoint. */
  reserved: Map<string, number>;
  cappedReads: number;
  /** Cases that missed their deadline or got a 503 under load: replayed alone at the end. */
  late: FuzzCase[];
  /** Of those, the ones the client gave up on: the server may still have answered (and reserved). */
  gaveUp: number;
}

describe.skipIf(!services)('Check fuzzing over gRPC', () => {
  let h: Harness;
  let client: grpc.Client;
  let redis: Redis;
  let dropDb: () => Promise<void>;
  const prefix = testPrefix('fuzz');
  const unhandled: unknown[] = [];
  const onUnhandled = (err: unknown) => unhandled.push(err);

  beforeAll(async () => {
    process.on('unhandledRejection', onUnhandled);
    process.on('uncaughtException', onUnhandled);
    const db = await createTestDatabase('fuzz');
    dropDb = db.drop;
    redis = new Redis(TEST_REDIS_URL);
    h = await startHarness({
      env: { DATABASE_URL: db.url, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: prefix, APPLY_ON_START: TENANTS, CHECK_TIMEOUT_MS: '100' },
      nowMs: Date.now(),
      realClock: true,
    });
    client = new grpc.Client(`127.0.0.1:${h.app.grpcPort}`, grpc.credentials.createInsecure(), {
      'grpc.max_send_message_length': 8 * 1024 * 1024,
    });
  });

  afterAll(async () => {
    process.off('unhandledRejection', onUnhandled);
    process.off('uncaughtException', onUnhandled);
    client?.close();
    await h?.stop();
    if (redis) {
      await dropKeysWithPrefix(redis, prefix);
      redis.disconnect();
    }
    await dropDb?.();
  });

  function send(bytes: Buffer): Promise<{ res?: CheckResponseMessage; err?: grpc.ServiceError; ms: number }> {
    const started = performance.now();
    return new Promise((resolve) => {
      client.makeUnaryRequest(
        '/envoy.service.auth.v3.Authorization/Check',
        (b: Buffer) => b,
        (b: Buffer) => Check.responseDeserialize(b) as CheckResponseMessage,
        bytes,
        new grpc.Metadata(),
        { deadline: Date.now() + DEADLINE_MS },
        (err, res) => resolve({ ...(err ? { err } : { res: res! }), ms: performance.now() - started }),
      );
    });
  }

  /**
   * @param replay the case is sent alone after the run: being late or unavailable is then a violation (an
   *   input that makes the server slow), where under the load of the run it only earns a replay.
   */
  function judge(c: FuzzCase, o: Observed, answer: { res?: CheckResponseMessage; err?: grpc.ServiceError; ms: number }, replay = false): void {
    const fail = (why: string) => {
      if (o.violations.length < 50) o.violations.push(`seed ${SEED} case ${c.n} [${c.label}]: ${why}`);
    };
    o.latencies.push(answer.ms);
    // The request as the server read it: its own selective decoder (which the unit tests hold to the full
    // decoder on well-formed messages). On corrupted bytes the two may differ (the server skips fields it
    // does not use, and merges a repeated message as protobuf says, where protobufjs replaces it), and
    // what the server received is what its answer must be judged by.
    let decoded: RawHttpRequest | null = null;
    try {
      decoded = serverDecode(c.bytes);
    } catch {
      decoded = null;
    }
    if (answer.err?.code === grpc.status.DEADLINE_EXCEEDED && !replay) {
      o.late.push(c);
      o.gaveUp++;
      return;
    }
    if (answer.err) {
      o.grpcErrors++;
      if (decoded === null && answer.err.code === grpc.status.INTERNAL) return; // undecodable bytes: not a CheckRequest
      return fail(`gRPC error ${grpc.status[answer.err.code]} (${answer.err.details}) after ${answer.ms.toFixed(1)} ms`);
    }
    const res = answer.res!;
    if (decoded === null) return fail('an undecodable message was answered');
    const http = decoded;
    const method = (http?.method ?? '').toUpperCase();
    if (res.denied_response) {
      const status = httpStatusNumber(res.denied_response.status.code);
      o.byStatus.set(status, (o.byStatus.get(status) ?? 0) + 1);
      let body: { code?: unknown; message?: unknown; requestId?: unknown };
      try {
        body = JSON.parse(res.denied_response.body) as typeof body;
      } catch {
        return fail(`denial body is not JSON: ${res.denied_response.body.slice(0, 80)}`);
      }
      if (typeof body.code !== 'string' || typeof body.message !== 'string' || typeof body.requestId !== 'string') fail(`denial body shape: ${res.denied_response.body.slice(0, 120)}`);
      if (typeof body.requestId === 'string' && !/^[\x21-\x7e]{1,128}$/.test(body.requestId)) fail(`unprintable requestId echoed: ${JSON.stringify(body.requestId)}`);
      if (!res.denied_response.headers.some((x) => x.header.key === 'Content-Type')) fail('denial without Content-Type');
      if (![400, 401, 403, 429, 503].includes(status)) fail(`unexpected status ${status}`);
      if (status === 503 && !replay) o.late.push(c); // Redis or Postgres slower than the budget under load
      else if (status === 503) fail('503 with Redis and Postgres up, sent alone');
      return;
    }
    o.allowed++;
    o.byStatus.set(200, (o.byStatus.get(200) ?? 0) + 1);
    const fields = res.dynamic_metadata?.fields ?? {};
    const tenantId = fields.tenant_id?.stringValue ?? '';
    const carried = carriedTenants(c);
    if (!carried.has(tenantId)) return fail(`allowed as ${JSON.stringify(tenantId)} without that tenant's valid key`);
    const upstream = new Map((res.ok_response?.headers ?? []).map((x) => [x.header.key, x.header.value]));
    if (upstream.get('x-tenant-id') !== tenantId) fail('allowed without x-tenant-id set to the tenant');
    const removed = res.ok_response?.headers_to_remove ?? [];
    if (!removed.includes('x-api-key') && !removed.includes('authorization')) fail('allowed without removing the key header');
    if (fields.degraded?.boolValue === true) fail('degraded with Redis and Postgres up');
    // What it must meter as: by construction for variants, by the documented rules for the rest.
    const rawPath = typeof http?.path === 'string' ? http.path : '';
    const expected = c.meant !== null ? matcher.match(c.meant) : matcher.match(normalizePath(rawPath));
    if (c.meant !== null && matcher.match(normalizePath(rawPath)) !== expected) fail(`path ${JSON.stringify(rawPath)} normalises off its meaning ${c.meant}`);
    const reserved = fields.reserved?.boolValue === true;
    const endpoint = fields.endpoint?.stringValue ?? null;
    if (expected !== null && !(reserved && endpoint === expected)) fail(`path ${JSON.stringify(rawPath)} allowed unmetered (expected ${expected}, got ${endpoint})`);
    if (expected === null && reserved) fail(`path ${JSON.stringify(rawPath)} metered as ${endpoint} but meters as nothing`);
    if (reserved && endpoint !== null) o.reserved.set(`${tenantId} ${endpoint}`, (o.reserved.get(`${tenantId} ${endpoint}`) ?? 0) + 1);
    if (tenantId === 'fuzz_capped' && (method === 'GET' || method === 'HEAD')) o.cappedReads++;
  }

  it(`survives ${SECONDS} s of random and mutated CheckRequests, and never allows what it must deny`, { timeout: (SECONDS + 60) * 1000 }, async () => {
    console.info(`fuzz: seed ${SEED} (FUZZ_SEED=${SEED} replays it), ${SECONDS} s, ${CONCURRENCY} in flight`);
    const r = seededRandom(SEED);
    const o: Observed = { cases: 0, grpcErrors: 0, allowed: 0, byStatus: new Map(), latencies: [], violations: [], reserved: new Map(), cappedReads: 0, late: [], gaveUp: 0 };
    // Warm up (JIT, connections, the key cache) with plain requests, so the first round is not judged cold.
    for (let i = 0; i < 50; i++) {
      const key = [KEYS.open, KEYS.suspended, KEYS.expired, `ul_fuzz_warmup_${i}`][i % 4];
      await send(serialize(buildCheckRequest({ key, method: 'POST', path: '/usage', target: '', headers: [], requestId: undefined, timeoutMs: 0 })));
    }
    const labels = new Map<string, number>();
    const started = performance.now();
    const until = started + SECONDS * 1000;
    // Cases are generated, then sent, then judged, in rounds: the client shares the server's event loop, and
    // building a 256 KB header or a thousand headers between sends would count against other calls' deadlines.
    while (performance.now() < until) {
      const batch = Array.from({ length: BATCH }, () => generate(r, o.cases++));
      for (const c of batch) for (const l of c.label.split(' ')) labels.set(l, (labels.get(l) ?? 0) + 1);
      const answers: Array<Awaited<ReturnType<typeof send>>> = new Array(batch.length);
      let next = 0;
      const worker = async () => {
        for (let i = next++; i < batch.length; i = next++) answers[i] = await send(batch[i]!.bytes);
      };
      await Promise.all(Array.from({ length: CONCURRENCY }, worker));
      batch.forEach((c, i) => judge(c, o, answers[i]!));
    }
    const elapsedS = (performance.now() - started) / 1000;
    // Late answers under load are replayed one at a time: an input that makes the server slow stays slow.
    const late = o.late.splice(0);
    for (const c of late.slice(0, 200)) judge(c, o, await send(c.bytes), true);
    expect(late.length, 'more late answers under load than can be replayed').toBeLessThanOrEqual(200);

    const lines = h.logs.lines;
    const sorted = [...o.latencies].sort((a, b) => a - b);
    const q = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
    const statuses = [...o.byStatus].sort(([a], [b]) => a - b).map(([s, n]) => `${s}:${n}`).join(' ');
    const top = [...labels].sort((a, b) => b[1] - a[1]).map(([l, n]) => `${l} ${n}`).join(', ');
    console.info(
      `fuzz: ${o.cases} cases in ${elapsedS.toFixed(1)} s (${(o.cases / elapsedS).toFixed(0)}/s), answers ${statuses}, ` +
        `undecodable ${o.grpcErrors}, late under load ${late.length} (${o.gaveUp} past the deadline; all answered in time alone), latency p50 ${q(0.5).toFixed(1)} ms p99 ${q(0.99).toFixed(1)} ms max ${q(1).toFixed(1)} ms, ` +
        `capped tenant: ${[...o.reserved].filter(([k]) => k.startsWith('fuzz_capped ')).reduce((n, [, v]) => n + v, 0)} metered and ${o.cappedReads} reads allowed, ${lines.length} log lines\nfuzz mutations: ${top}`,
    );
    expect(o.violations, o.violations.join('\n')).toEqual([]);

    // Logs: one JSON object per line, no key anywhere.
    for (const line of lines) {
      const rec = JSON.parse(line) as unknown;
      expect(typeof rec === 'object' && rec !== null && !Array.isArray(rec)).toBe(true);
      for (const k of Object.values(KEYS)) expect(line.includes(k), `a key in a log line: ${line.slice(0, 200)}`).toBe(false);
    }

    // The capped tenant never passed any limit, and Redis holds exactly the reservations answered allowed.
    const period = periodFor(Date.now(), null).label;
    const usage = async (tenant: string) => redis.hgetall(`${prefix}usage:${tenant}:${period}`);
    const capped = await usage('fuzz_capped');
    const open = await usage('fuzz_open');
    const cappedTotal = [...o.reserved].filter(([k]) => k.startsWith('fuzz_capped ')).reduce((s, [, v]) => s + v, 0);
    expect(cappedTotal).toBeLessThanOrEqual(CAPPED_LIMITS.total);
    expect(Number(capped.__total__ ?? 0)).toBeLessThanOrEqual(CAPPED_LIMITS.total);
    expect(o.cappedReads).toBeLessThanOrEqual(CAPPED_LIMITS.reads);
    for (const [endpoint, limit] of Object.entries(CAPPED_LIMITS.endpoints)) {
      const seen = o.reserved.get(`fuzz_capped ${endpoint}`) ?? 0;
      expect(seen, `fuzz_capped ${endpoint}`).toBeLessThanOrEqual(limit);
      // A call the client gave up on may have been answered allowed by a server that still thought it in time
      // (its deadline runs from when the call arrived, a little after the client's): that reservation stands.
      // Answers the server knows to be late give theirs back (grpc/server.ts). Everything else matches exactly.
      for (const [tenant, hash, seenHere] of [['fuzz_capped', capped, seen], ['fuzz_open', open, o.reserved.get(`fuzz_open ${endpoint}`) ?? 0]] as const) {
        const stored = Number(hash[`op:${endpoint}`] ?? 0);
        expect(stored, `Redis ${tenant} ${endpoint}`).toBeGreaterThanOrEqual(seenHere);
        expect(stored, `Redis ${tenant} ${endpoint}`).toBeLessThanOrEqual(seenHere + o.gaveUp);
      }
    }

    expect(unhandled.map(String)).toEqual([]);
    expect(o.cases).toBeGreaterThan(SECONDS * 50);
  });
});
