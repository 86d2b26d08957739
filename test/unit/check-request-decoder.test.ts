import { describe, expect, it } from 'vitest';
import { fromCheckRequest, type CheckRequestMessage } from '../helpers/full-check-request.js';
import { createCheckRequestDecoder } from '../../src/grpc/check-request-decoder.js';
import { authorizationService } from '../../src/grpc/protos.js';
import { seededRandom } from '../helpers/prng.js';

// The selective decoder must read exactly what the full decoder plus fromCheckRequest reads, for the
// fields the Check uses (method, path, id and the three headers it looks at).
const Check = authorizationService().service.Check!;
const encode = (m: CheckRequestMessage | Record<string, unknown>): Buffer => Check.requestSerialize(m);
const fullDecode = (b: Buffer) => fromCheckRequest(Check.requestDeserialize(b) as CheckRequestMessage);
const decode = createCheckRequestDecoder();
const WANTED = ['x-api-key', 'authorization', 'x-request-id'];

function wantedOnly(h: ReadonlyMap<string, string>): Map<string, string> {
  return new Map([...h].filter(([k]) => WANTED.includes(k)));
}

type Rnd = () => number;
const pick = <T>(r: Rnd, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const text = (r: Rnd, n: number) =>
  Array.from({ length: Math.floor(r() * n) }, () => pick(r, ['a', 'Z', '0', '/', '-', ' ', 'é', '✓', '%', '?', ','])).join('');
const NAMES = ['x-api-key', 'X-Api-Key', 'authorization', 'Authorization', 'x-request-id', 'X-REQUEST-ID', 'accept', 'user-agent', ':authority', 'x-forwarded-for', 'x-api-keys', 'authorizatio'];

function randomRequest(r: Rnd): Record<string, unknown> {
  const http: Record<string, unknown> = {};
  if (r() < 0.9) http.method = pick(r, ['GET', 'POST', 'head', '', 'DELETE']);
  if (r() < 0.9) http.path = `/${text(r, 30)}`;
  if (r() < 0.7) http.id = text(r, 20);
  if (r() < 0.3) http.body = text(r, 50);
  if (r() < 0.5) http.host = text(r, 10);
  if (r() < 0.7) {
    const headers: Record<string, string> = {};
    for (let i = Math.floor(r() * 8); i > 0; i--) headers[pick(r, NAMES)] = text(r, 40);
    http.headers = headers;
  }
  if (r() < 0.5) {
    http.header_map = {
      headers: Array.from({ length: Math.floor(r() * 6) }, () => {
        const h: Record<string, unknown> = {};
        if (r() < 0.95) h.key = pick(r, NAMES);
        if (r() < 0.6) h.value = text(r, 20);
        if (r() < 0.5) h.raw_value = Buffer.from(text(r, 20));
        return h;
      }),
    };
  }
  const attrs: Record<string, unknown> = { request: { http, time: { seconds: '1700000000', nanos: 5 } } };
  if (r() < 0.5) attrs.source = { address: { socket_address: { address: '10.0.0.1', port_value: 4242 } }, principal: text(r, 10) };
  if (r() < 0.5) attrs.context_extensions = { [text(r, 5)]: text(r, 5) };
  return r() < 0.05 ? {} : { attributes: attrs };
}

describe('selective CheckRequest decoder', () => {
  it('reads what the full decoder reads, on 5,000 random well-formed requests', () => {
    const r = seededRandom(7);
    for (let i = 0; i < 5000; i++) {
      const bytes = encode(randomRequest(r));
      const full = fullDecode(bytes);
      const mine = decode(bytes);
      expect({ ...mine, headers: wantedOnly(mine.headers) }, `case ${i}`).toEqual({ ...full, headers: wantedOnly(full.headers) });
    }
  });

  it('skips unknown fields of every wire type, groups included', () => {
    const known = encode({ attributes: { request: { http: { method: 'GET', path: '/v1/x', headers: { 'x-api-key': 'k' } } } } });
    const tag = (no: number, wt: number) => {
      const out: number[] = [];
      let v = (no << 3) | wt;
      while (v > 0x7f) {
        out.push((v & 0x7f) | 0x80);
        v >>>= 7;
      }
      out.push(v);
      return out;
    };
    const fields = Buffer.from([
      ...tag(99, 0), 0x96, 0x01,
      ...tag(100, 1), 1, 2, 3, 4, 5, 6, 7, 8,
      ...tag(101, 2), 3, 0x61, 0x62, 0x63,
      ...tag(102, 5), 1, 2, 3, 4,
      ...tag(103, 3), ...tag(1, 0), 5, ...tag(2, 2), 1, 0x7a, ...tag(103, 4),
    ]);
    const out = decode(Buffer.concat([fields, known, fields]));
    expect(out).toMatchObject({ method: 'GET', path: '/v1/x' });
    expect(out.headers.get('x-api-key')).toBe('k');
  });

  it('decodes raw_value as the full mapping does, a leading byte-order mark dropped', () => {
    const bytes = encode({
      attributes: { request: { http: { method: 'GET', path: '/', header_map: { headers: [{ key: 'x-request-id', raw_value: Buffer.from([0xef, 0xbb, 0xbf, 0x61, 0x62]) }] } } } },
    });
    expect(decode(bytes).headers.get('x-request-id')).toBe('ab');
    expect(wantedOnly(decode(bytes).headers)).toEqual(wantedOnly(fullDecode(bytes).headers));
  });

  it('merges a message that appears twice, as protobuf requires', () => {
    const a = encode({ attributes: { request: { http: { method: 'GET', headers: { 'x-api-key': 'k1', accept: 'x' } } } } });
    const b = encode({ attributes: { request: { http: { path: '/v1/items', headers: { 'x-request-id': 'r1' } } } } });
    const out = decode(Buffer.concat([a, b]));
    expect(out).toMatchObject({ method: 'GET', path: '/v1/items' });
    expect(wantedOnly(out.headers)).toEqual(new Map([['x-api-key', 'k1'], ['x-request-id', 'r1']]));
  });

  it('throws on truncated or malformed bytes and never reads past the message', () => {
    const bytes = encode({ attributes: { request: { http: { method: 'GET', path: '/v1/items', headers: { 'x-api-key': 'k' } } } } });
    for (let cut = 1; cut < bytes.length; cut++) {
      try {
        decode(bytes.subarray(0, cut));
      } catch (err) {
        expect((err as Error).message).toMatch(/CheckRequest is malformed/);
      }
    }
    expect(() => decode(Buffer.from([0x0f]))).toThrow(/invalid wire type/);
    expect(() => decode(Buffer.from([0x0a, 0x05, 0x01]))).toThrow(/past the end/);
    expect(() => decode(Buffer.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]))).toThrow(/varint/);
    expect(decode(Buffer.alloc(0))).toEqual({ method: undefined, path: undefined, id: undefined, headers: new Map() });
  });
});
