// The benchmark's tenant population and request mix, generated deterministically (seeded PRNG) so runs
// compare. 10,000 tenants over three tiers, two keys each; requests pick tenants with a Zipf skew (a few
// tenants are hot and run into their limits), with about 15 headers each as Envoy sends them.
import { stringify } from 'yaml';
import { authorizationService } from '../src/grpc/protos.js';
import { buildCheckRequest } from '../src/cli/check-command.js';
import { seededRandom as prng } from '../test/helpers/prng.js';

export interface Population {
  readonly yaml: string;
  readonly keys: readonly string[][]; // keys[tenantIndex] = its API keys
  readonly tierOf: readonly string[];
}

export function population(tenants: number, seed = 42): Population {
  const rnd = prng(seed);
  const tiers = [
    { id: 'bench_free', readRateLimit: { requests: 10, perSeconds: 60 }, monthlyQuota: { endpoints: { '/verify': 100 } }, failurePolicy: 'allow' },
    { id: 'bench_pro', readRateLimit: { requests: 1000, perSeconds: 60 }, monthlyQuota: { endpoints: { '/verify': 10_000, '/files/*': 5000 } }, failurePolicy: 'allow' },
    { id: 'bench_enterprise', readRateLimit: { requests: 100_000, perSeconds: 60 }, monthlyQuota: { total: 2_000_000, endpoints: { '/verify': 1_000_000, '/files/*': 1_000_000 } }, failurePolicy: 'deny' },
  ];
  const keys: string[][] = [];
  const tierOf: string[] = [];
  const list = [];
  for (let i = 0; i < tenants; i++) {
    const r = rnd();
    const tier = r < 0.7 ? 'bench_free' : r < 0.95 ? 'bench_pro' : 'bench_enterprise';
    const id = `bench_t${String(i).padStart(5, '0')}`;
    const k = [`bk_live_${id}_a_${Math.floor(rnd() * 1e12)}`, `bk_live_${id}_b_${Math.floor(rnd() * 1e12)}`];
    keys.push(k);
    tierOf.push(tier);
    list.push({ id, tier, status: i % 100 === 99 ? 'suspended' : 'active', apiKeys: k });
  }
  return { yaml: stringify({ tiers, tenants: list }), keys, tierOf };
}

const EXTRA_HEADERS: Array<[string, string]> = [
  ['accept-encoding', 'gzip, deflate, br'],
  ['accept-language', 'en-US,en;q=0.9'],
  ['x-forwarded-for', '203.0.113.7'],
  ['x-envoy-expected-rq-timeout-ms', '15000'],
  ['traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'],
  ['cookie', 'session=abc123; theme=dark'],
  ['content-length', '0'],
];

export interface Mix {
  readonly gets: number;
  readonly heads: number;
  readonly posts: number;
  readonly invalid: number;
}

/**
 * `count` gRPC frames (5-byte gRPC prefix + CheckRequest), length-prefixed for bench/loadgen.mjs.
 * Mix: 60% GET, 5% HEAD, 30% metered POST (/verify and /files/*), 5% unknown keys.
 */
export function corpus(pop: Population, count: number, seed = 7): { file: Buffer; mix: Mix } {
  const rnd = prng(seed);
  const n = pop.keys.length;
  // Zipf(s=1.1) over tenants by inverse CDF on a precomputed table.
  const weights = Array.from({ length: n }, (_, i) => 1 / (i + 1) ** 1.1);
  const total = weights.reduce((a, b) => a + b, 0);
  const cdf: number[] = [];
  let acc = 0;
  for (const w of weights) cdf.push((acc += w / total));
  const pick = () => {
    const r = rnd();
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((cdf[mid] ?? 1) < r) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  const serialize = authorizationService().service.Check!.requestSerialize;
  const parts: Buffer[] = [];
  const mix = { gets: 0, heads: 0, posts: 0, invalid: 0 };
  for (let i = 0; i < count; i++) {
    const t = pick();
    const r = rnd();
    let method = 'GET';
    let path = `/v1/items?page=${Math.floor(rnd() * 50)}`;
    let key = pop.keys[t]?.[rnd() < 0.5 ? 0 : 1];
    if (r < 0.6) mix.gets++;
    else if (r < 0.65) {
      method = 'HEAD';
      mix.heads++;
    } else if (r < 0.95) {
      method = 'POST';
      path = rnd() < 0.8 ? '/verify' : `/files/${Math.floor(rnd() * 1000)}`;
      mix.posts++;
    } else {
      // A bounded pool: a warm server has met every unknown key and caches it as unknown.
      key = `bk_live_unknown_${Math.floor(rnd() * 100)}_key`;
      mix.invalid++;
    }
    const msg = serialize(
      buildCheckRequest({ key, method, path, target: '', headers: EXTRA_HEADERS, requestId: `bench-${i}`, timeoutMs: 200 }),
    );
    const frame = Buffer.alloc(9 + msg.length);
    frame.writeUInt32BE(5 + msg.length, 0);
    frame.writeUInt8(0, 4);
    frame.writeUInt32BE(msg.length, 5);
    msg.copy(frame, 9);
    parts.push(frame);
  }
  return { file: Buffer.concat(parts), mix };
}
