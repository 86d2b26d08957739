import { describe, expect, it } from 'vitest';
import { deny, type Allow } from '../../src/core/decide.js';
import { toCheckResponse, type CheckResponseMessage } from '../../src/grpc/check-mapping.js';
import { createCheckResponseEncoder } from '../../src/grpc/check-response-encoder.js';
import { authorizationService } from '../../src/grpc/protos.js';
import { seededRandom } from '../helpers/prng.js';

// The hand-written encoder must say on the wire what protobufjs says for the same CheckResponse.
const Check = authorizationService().service.Check!;
const encode = createCheckResponseEncoder();
const decode = (b: Buffer) => Check.responseDeserialize(b);
const reference = (m: CheckResponseMessage) => decode(Check.responseSerialize(m));

function allow(over: Partial<Allow> = {}): Allow {
  return {
    outcome: 'allow',
    tenantId: 'acme',
    tierId: 'pro',
    keyHeader: 'x-api-key',
    degraded: false,
    metering: { endpoint: '/verify', period: '2025-09' },
    rateLimit: { limit: 1000, remaining: 998, resetEpochS: 1758196800, resetAtMs: 1758196800123, retryAfterS: null },
    thresholds: [],
    ...over,
  } as Allow;
}

describe('hand-written CheckResponse encoder', () => {
  it('encodes every decision shape as protobufjs does', () => {
    const decisions = [
      allow(),
      allow({ metering: null, rateLimit: null }),
      allow({ degraded: true, keyHeader: 'authorization' }),
      deny('READ_RATE_LIMIT_EXCEEDED', { rateLimit: { limit: 10, remaining: 0, resetEpochS: 1758196860, resetAtMs: 1758196860000, retryAfterS: 42 } }),
      deny('USAGE_LIMIT_EXCEEDED'),
      deny('INVALID_API_KEY'),
      deny('BAD_REQUEST'),
      deny('USAGE_CHECK_UNAVAILABLE'),
    ];
    for (const d of decisions) {
      for (const id of ['req-1', 'x'.repeat(128), 'é✓-unicode']) {
        const m = toCheckResponse(d, id);
        expect(decode(encode(m)), `${d.outcome} ${'code' in d ? d.code : ''}`).toEqual(reference(m));
      }
    }
  });

  it('matches protobufjs on random header sets, long values and multi-byte text', () => {
    const r = seededRandom(11);
    // Whole code points (a 4-byte one included); a lone surrogate never reaches a response.
    const alphabet = Array.from('aZ9-é✓𝄞');
    const str = (n: number) => Array.from({ length: Math.floor(r() * n) }, () => alphabet[Math.floor(r() * alphabet.length)]).join('');
    for (let i = 0; i < 2000; i++) {
      // Cast: the message type names the one append action the server uses; the encoder takes any.
      const h = () => ({ header: { key: str(20), value: str(r() < 0.1 ? 3000 : 40) }, append_action: (r() < 0.5 ? 'OVERWRITE_IF_EXISTS_OR_ADD' : 'APPEND_IF_EXISTS_OR_ADD') as 'OVERWRITE_IF_EXISTS_OR_ADD' });
      const headers = Array.from({ length: Math.floor(r() * 6) }, h);
      const m: CheckResponseMessage =
        r() < 0.5
          ? { status: { code: 7, message: str(30) }, denied_response: { status: { code: 429 }, headers, body: str(r() < 0.1 ? 20_000 : 200) } }
          : {
              status: { code: 0 },
              ok_response: { headers, headers_to_remove: [str(10), str(10)], response_headers_to_add: headers.slice(0, 2) },
              dynamic_metadata: { fields: { [str(8) || 'k']: { stringValue: str(300) }, b: { boolValue: r() < 0.5 } } },
            };
      expect(decode(encode(m)), `case ${i}`).toEqual(reference(m));
    }
  });

  it('returns a buffer of its own for every call', () => {
    const a = encode(toCheckResponse(deny('INVALID_API_KEY'), 'a'));
    const copy = Buffer.from(a);
    encode(toCheckResponse(allow(), 'b'));
    expect(a.equals(copy)).toBe(true);
  });
});
