// Properties of the pure decision core, checked with fast-check over generated inputs (shrunk to a minimal
// counter-example on failure). What must hold for every input, not only the examples in test/unit:
// - normalizePath yields a canonical path (one leading slash, no empty, `.` or `..` segment, no trailing
//   slash, lower case, nothing that a second reading would change) and is idempotent;
// - every spelling of a path that README "Path normalisation" calls equivalent (case, percent-encoding,
//   `\`, `//`, `/./`, `/x/../`, a trailing slash, a query, a fragment, `..` above the root) meters exactly
//   as the plain path does, so a metered endpoint cannot be talked past;
// - the edge never throws on whatever a CheckRequest decodes to, and what it passes on is bounded;
// - a request without a valid key is never planned as anything but a deny, and a metered path is never
//   planned without its quota;
// - quota periods contain their instant and follow each other without gap or repeated label.
// FAST_CHECK_RUNS raises the number of runs per property (default 300).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { planCheck } from '../../src/core/decide.js';
import { canonicalize, EndpointMatcher, MAX_PATH_LENGTH, normalizePath } from '../../src/core/path.js';
import { periodFor } from '../../src/core/period.js';
import { extractKey, MAX_API_KEY_LENGTH, toCheckInput, type CheckInput } from '../../src/core/request.js';
import type { ResolvedKey, Tier } from '../../src/core/types.js';
import { createCheckRequestDecoder } from '../../src/grpc/check-request-decoder.js';
import { authorizationService } from '../../src/grpc/protos.js';
import { fromCheckRequest, type CheckRequestMessage } from '../helpers/full-check-request.js';
import { resolved, tenant } from '../helpers/fixtures.js';

const RUNS = Number(process.env.FAST_CHECK_RUNS ?? 300);
const params = { numRuns: RUNS };

// ---- generators ------------------------------------------------------------------------------------------

/** A path segment as endpoints are written: lower-case letters, digits, `-` and `_`. */
const cleanSegment = fc.stringMatching(/^[a-z0-9_-]{1,12}$/);
const cleanPath = fc.array(cleanSegment, { minLength: 1, maxLength: 5 }).map((s) => `/${s.join('/')}`);

const hex = (c: string, lower: boolean) => {
  const h = c.charCodeAt(0).toString(16).padStart(2, '0');
  return `%${lower ? h : h.toUpperCase()}`;
};

/** One character of a clean segment, spelled any of the ways that still mean that character. */
const spellChar = (c: string) =>
  fc.constantFrom<(c: string) => string>(
    (x) => x,
    (x) => x.toUpperCase(),
    (x) => hex(x, false),
    (x) => hex(x, true),
    (x) => hex(x.toUpperCase(), false),
  ).map((f) => f(c));

/** A segment separator, spelled any of the ways that still mean one `/` (plus detours that come back). */
const separator = fc.oneof(
  fc.constantFrom('/', '//', '///', '\\', '/\\', '%2F', '%2f', '%5C', '%5c', '/./', '/.//', '/%2e/', '/%2E/'),
  cleanSegment.map((x) => `/${x}/../`),
  cleanSegment.map((x) => `/${x}/%2e%2e/`),
  cleanSegment.map((x) => `/${x}%2F..%2F`),
);

const tail = fc.oneof(
  fc.constant(''),
  fc.constantFrom('/', '//', '/.', '/./', '\\'),
  fc.string({ maxLength: 20 }).map((q) => `?${q}`),
  fc.string({ maxLength: 20 }).map((f) => `#${f}`),
  fc.string({ maxLength: 20 }).map((q) => `/?${q}`),
);
const head = fc.constantFrom('', '/', '/..', '/../..', '/%2e%2e', '\\..', '/./');

/** An equivalent spelling of `path` (a clean path), by README's rules. */
function variantOf(path: string): fc.Arbitrary<string> {
  const segments = path.slice(1).split('/');
  return fc
    .tuple(
      head,
      fc.tuple(...segments.map((s) => fc.tuple(...[...s].map(spellChar)).map((cs) => cs.join('')))),
      fc.array(separator, { minLength: segments.length, maxLength: segments.length }),
      tail,
    )
    .map(([h, spelled, seps, t]) => {
      // The first separator leads the path; a leading `..` can never climb above the root.
      let out = h;
      spelled.forEach((s, i) => (out += `${seps[i]}${s}`));
      return out + t;
    });
}

const anyPath = fc.oneof(
  fc.string({ maxLength: 80 }),
  fc.string({ unit: 'binary', maxLength: 80 }),
  fc.array(fc.constantFrom('/', '\\', '.', '..', '%', '%2', '%2F', '%25', '%2525', '%3F', '%23', '?', '#', 'a', 'B', 'İ', '\u212a', '%C3', '%C3%A9', '%zz', '\u0000'), { maxLength: 30 }).map((p) => p.join('')),
  cleanPath.chain(variantOf),
);

// ---- normalizePath ---------------------------------------------------------------------------------------

describe('normalizePath', () => {
  it('yields a canonical path: one leading slash, no empty/./.. segments, no trailing slash, lower case', () => {
    fc.assert(
      fc.property(anyPath, (raw) => {
        const p = normalizePath(raw);
        expect(p.startsWith('/')).toBe(true);
        if (p !== '/') {
          const segments = p.slice(1).split('/');
          for (const s of segments) expect(['', '.', '..']).not.toContain(s);
        }
        expect(p).toBe(p.toLowerCase());
        expect(p).not.toMatch(/[?#\\]/);
      }),
      params,
    );
  });

  it('is idempotent: a normalised path reads the same when normalised again', () => {
    fc.assert(
      fc.property(anyPath, (raw) => {
        expect(normalizePath(normalizePath(raw))).toBe(normalizePath(raw));
      }),
      params,
    );
  });

  it('takes its fast path only where the full rules would change nothing', () => {
    // Paths near the fast path's edge: its own alphabet plus the characters and segments it must refuse.
    const nearCanonical = fc
      .array(fc.constantFrom('/', '.', '..', 'a', 'z', '0', '-', '_', '~', '@', ':', '!', '$', '&', "'", '(', ')', '*', '+', ',', ';', '=', 'A', 'Z', '%', '%2e', '%41', '\\', '?', '#', ' ', '"', '<', '[', 'é', '\u212a'), { maxLength: 16 })
      .map((p) => p.join(''));
    fc.assert(
      fc.property(fc.oneof(anyPath, nearCanonical, cleanPath), (raw) => {
        expect(normalizePath(raw)).toBe(canonicalize(raw));
      }),
      params,
    );
    for (const p of ['/', '/verify', '/a/b-c/d_e', '/v1/x~y', '/a.b/c..d/.e/e.']) expect(normalizePath(p)).toBe(p);
    for (const p of ['/.', '/..', '/a/./b', '/a/../b', '/a/', '//a', '/A', '/a%2fb', '']) expect(normalizePath(p)).not.toBe(p);
  });

  it('ignores the query string and the fragment', () => {
    const base = anyPath.map((p) => p.replace(/[?#]/g, ''));
    fc.assert(
      fc.property(base, fc.string({ maxLength: 30 }), fc.constantFrom('?', '#'), (p, rest, mark) => {
        expect(normalizePath(`${p}${mark}${rest}`)).toBe(normalizePath(p));
      }),
      params,
    );
  });

  it('never climbs above the root, however many `..` lead the path', () => {
    fc.assert(
      fc.property(anyPath, fc.integer({ min: 1, max: 20 }), fc.constantFrom('/..', '/%2e%2e', '\\..', '/%2E%2E'), (p, n, up) => {
        const rooted = p.startsWith('/') || p.startsWith('\\') ? p : `/${p}`;
        expect(normalizePath(up.repeat(n) + rooted)).toBe(normalizePath(rooted));
      }),
      params,
    );
  });

  it('maps every equivalent spelling of a clean path to that path', () => {
    fc.assert(
      fc.property(
        cleanPath.chain((p) => fc.tuple(fc.constant(p), variantOf(p))),
        ([clean, variant]) => {
          expect(normalizePath(variant)).toBe(clean);
        },
      ),
      params,
    );
  });
});

// ---- EndpointMatcher: what meters as what ----------------------------------------------------------------

describe('EndpointMatcher over normalised paths', () => {
  const configured = ['/verify', '/files/*', '/files/big/*', '/v1/extract'];
  const matcher = new EndpointMatcher(configured);

  it('meters every spelling of a metered endpoint, and of paths below a /prefix/*, as the endpoint itself', () => {
    const metered = fc.oneof(
      fc.constantFrom('/verify', '/v1/extract', '/files', '/files/big'),
      fc.array(cleanSegment, { minLength: 1, maxLength: 3 }).map((s) => `/files/${s.join('/')}`),
      fc.array(cleanSegment, { minLength: 1, maxLength: 3 }).map((s) => `/files/big/${s.join('/')}`),
    );
    fc.assert(
      fc.property(
        metered.chain((p) => fc.tuple(fc.constant(p), variantOf(p))),
        ([clean, variant]) => {
          const expected = matcher.match(clean);
          expect(expected).not.toBeNull();
          expect(matcher.match(normalizePath(variant))).toBe(expected);
        },
      ),
      params,
    );
  });

  it('meters a spelling exactly as it meters the plain path (neither more nor less)', () => {
    fc.assert(
      fc.property(
        cleanPath.chain((p) => fc.tuple(fc.constant(p), variantOf(p))),
        ([clean, variant]) => {
          expect(matcher.match(normalizePath(variant))).toBe(matcher.match(clean));
        },
      ),
      params,
    );
  });
});

// ---- the edge: CheckRequest → input ----------------------------------------------------------------------

/** Whatever proto-loader could hand the handler, and more: wrong types, nulls, huge and odd strings. */
const junk: fc.Arbitrary<unknown> = fc.anything({
  maxDepth: 3,
  withBigInt: true,
  withDate: true,
  withMap: true,
  withNullPrototype: true,
  withTypedArray: true,
});
const headerName = fc.oneof(
  fc.constantFrom('x-api-key', 'X-API-KEY', 'X-Api-Key', 'authorization', 'Authorization', 'x-request-id', ':path', ':method'),
  fc.string({ maxLength: 20 }),
);
const headerValue = fc.oneof(fc.string({ maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 40 }), fc.constantFrom('Bearer ', 'bearer  k', 'Basic abc', ''));
const httpAttrs = fc.record(
  {
    id: fc.oneof(fc.string({ maxLength: 140 }), junk),
    method: fc.oneof(fc.constantFrom('GET', 'get', 'HEAD', 'POST', 'PROPFIND', 'G E T', '', 'X'.repeat(40)), fc.string({ maxLength: 10 }), junk),
    path: fc.oneof(anyPath, junk),
    headers: fc.oneof(fc.dictionary(headerName, headerValue, { maxKeys: 8 }), junk),
    header_map: fc.oneof(
      fc.record({
        headers: fc.array(
          fc.record(
            // `bytes` decode as a Buffer (or are absent): proto-loader never hands over anything else there.
            { key: fc.oneof(headerName, junk), value: fc.oneof(headerValue, junk), raw_value: fc.uint8Array({ maxLength: 40 }) },
            { requiredKeys: [] },
          ),
          { maxLength: 8 },
        ),
      }),
      junk,
    ),
    body: fc.string({ maxLength: 40 }),
    raw_body: fc.uint8Array({ maxLength: 40 }),
  },
  { requiredKeys: [] },
);
const checkRequest = fc.oneof(
  junk,
  httpAttrs.map((http) => ({ attributes: { request: { http } } })),
);

/** What toCheckInput may pass on, whatever it was given. */
function expectBoundedInput(raw: ReturnType<typeof fromCheckRequest>): void {
  const result = toCheckInput(raw, () => 'fallback-id');
  const requestId = result.ok ? result.input.requestId : result.requestId;
  expect(requestId).toMatch(/^[\x21-\x7e]{1,128}$/);
  if (!result.ok) return;
  const { input } = result;
  expect(input.method).toMatch(/^[A-Z][A-Z0-9_-]{0,31}$/);
  expect(input.path.length).toBeLessThanOrEqual(MAX_PATH_LENGTH * 3);
  if (input.key.kind === 'present') {
    expect(input.key.key).toMatch(/^[\x21-\x7e]+$/);
    expect(input.key.key.length).toBeLessThanOrEqual(MAX_API_KEY_LENGTH);
  }
}

describe('CheckRequest → CheckInput', () => {
  // The properties below feed decoded messages (the reference mapping, junk values included) to the core;
  // this one feeds bytes to the decoder the server runs.
  it("the server's decoder, on any bytes, either refuses them cleanly or yields only bounded, printable values", () => {
    const decode = createCheckRequestDecoder();
    const serialize = authorizationService().service.Check!.requestSerialize;
    const encoded = httpAttrs.chain((http) => {
      try {
        return fc.constant(new Uint8Array(serialize({ attributes: { request: { http } } })));
      } catch {
        return fc.constant(new Uint8Array(0)); // junk values protobufjs refuses to encode
      }
    });
    const bytes = fc.oneof(fc.uint8Array({ maxLength: 300 }), encoded, encoded.chain((b) => fc.nat(b.length).map((n) => b.subarray(0, n))));
    fc.assert(
      fc.property(bytes, (b) => {
        let raw: ReturnType<typeof decode>;
        try {
          raw = decode(Buffer.from(b));
        } catch (err) {
          expect((err as Error).message).toMatch(/^CheckRequest is malformed/);
          return;
        }
        expectBoundedInput(raw);
      }),
      params,
    );
  });

  it('never throws, and passes on only bounded, printable values', () => {
    fc.assert(
      fc.property(checkRequest, (req) => expectBoundedInput(fromCheckRequest(req as CheckRequestMessage))),
      params,
    );
  });

  it('finds the key under any capitalisation of its header name, in `headers` and in `header_map`', () => {
    const key = fc.stringMatching(/^[A-Za-z0-9_]{12,64}$/);
    const capitalised = (name: string) =>
      fc.array(fc.boolean(), { minLength: name.length, maxLength: name.length }).map((up) => [...name].map((c, i) => (up[i] ? c.toUpperCase() : c)).join(''));
    fc.assert(
      fc.property(key, capitalised('x-api-key'), fc.boolean(), (k, name, asMap) => {
        const http = asMap ? { header_map: { headers: [{ key: name, value: k }] } } : { headers: { [name]: k } };
        expect(extractKey(fromCheckRequest({ attributes: { request: { http } } }).headers)).toEqual({ kind: 'present', key: k, header: 'x-api-key' });
      }),
      params,
    );
  });

  it('never reads a request body: adding one changes nothing', () => {
    fc.assert(
      fc.property(httpAttrs, fc.string({ maxLength: 200 }), (http, body) => {
        const without = { ...(http as Record<string, unknown>) };
        delete without.body;
        delete without.raw_body;
        const withBody = { ...without, body, raw_body: new TextEncoder().encode(body) };
        const a = fromCheckRequest({ attributes: { request: { http: without } } } as CheckRequestMessage);
        const b = fromCheckRequest({ attributes: { request: { http: withBody } } } as CheckRequestMessage);
        expect(b).toEqual(a);
      }),
      params,
    );
  });
});

// ---- the plan: who may pass, and what is metered ---------------------------------------------------------

const TIER: Tier = {
  id: 'prop',
  readRateLimit: { requests: 10, perSeconds: 60 },
  monthlyQuota: { total: 100, endpoints: { '/verify': 10, '/files/*': 5 } },
  alertThresholds: [0.8, 1],
  failurePolicy: 'allow',
};
const T0 = Date.UTC(2025, 8, 18, 12);

const keyState = fc.record({
  revokedAtMs: fc.option(fc.integer({ min: T0 - 1e9, max: T0 + 1e9 }), { nil: null }),
  expiresAtMs: fc.option(fc.integer({ min: T0 - 1e9, max: T0 + 1e9 }), { nil: null }),
  suspended: fc.boolean(),
});

describe('planCheck', () => {
  it('never lets a missing, malformed, unknown, revoked, expired or suspended key past the plan', () => {
    fc.assert(
      fc.property(
        fc.constantFrom<CheckInput['key']['kind']>('missing', 'malformed', 'present'),
        fc.boolean(),
        keyState,
        fc.constantFrom('GET', 'POST', 'HEAD', 'PUT'),
        cleanPath,
        fc.integer({ min: T0 - 1e9, max: T0 + 1e9 }),
        (kind, known, s, method, path, now) => {
          const key: CheckInput['key'] =
            kind === 'missing' ? { kind } : kind === 'malformed' ? { kind, header: 'x-api-key' } : { kind, key: 'k'.repeat(20), header: 'x-api-key' };
          const r: ResolvedKey | null = known
            ? resolved(tenant('t', TIER.id, { status: s.suspended ? 'suspended' : 'active' }), TIER, { revokedAtMs: s.revokedAtMs, expiresAtMs: s.expiresAtMs })
            : null;
          const plan = planCheck({ method, path, key, requestId: 'r' }, r, now);
          const valid =
            kind === 'present' &&
            r !== null &&
            !s.suspended &&
            (s.revokedAtMs === null || s.revokedAtMs > now) &&
            (s.expiresAtMs === null || s.expiresAtMs > now);
          if (!valid) {
            expect(plan.kind).toBe('decided');
            if (plan.kind === 'decided') expect(plan.decision.outcome).toBe('deny');
          }
        },
      ),
      params,
    );
  });

  it('never plans a metered path without its quota, whatever the spelling or method', () => {
    const metered = fc.constantFrom('/verify', '/files', '/files/a/b');
    fc.assert(
      fc.property(
        metered.chain((p) => variantOf(p)),
        fc.constantFrom('GET', 'POST', 'HEAD', 'DELETE', 'PROPFIND', 'X-CUSTOM'),
        (variant, method) => {
          const input: CheckInput = { method, path: normalizePath(variant), key: { kind: 'present', key: 'k'.repeat(20), header: 'x-api-key' }, requestId: 'r' };
          const plan = planCheck(input, resolved(tenant('t', TIER.id), TIER), T0);
          expect(plan.kind).toBe('store');
          if (plan.kind === 'store') expect(plan.request.quota?.endpoint).toMatch(/^\/verify$|^\/files\/\*$/);
        },
      ),
      params,
    );
  });
});

// ---- periods ---------------------------------------------------------------------------------------------

describe('periodFor', () => {
  const instant = fc.integer({ min: Date.UTC(2000, 0, 1), max: Date.UTC(2100, 0, 1) });
  it('contains its instant, and the next period starts where it ends with another label', () => {
    fc.assert(
      fc.property(instant, fc.option(instant, { nil: null }), (now, anchor) => {
        const p = periodFor(now, anchor);
        expect(p.startMs).toBeLessThanOrEqual(now);
        expect(now).toBeLessThan(p.endMs);
        const next = periodFor(p.endMs, anchor);
        expect(next.startMs).toBe(p.endMs);
        expect(next.label).not.toBe(p.label);
        expect(p.label).toBe(new Date(p.startMs).toISOString().slice(0, 7));
      }),
      params,
    );
  });
});
