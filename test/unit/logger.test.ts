import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { censorSecrets, createLogger } from '../../src/logger.js';

function capture(): { sink: Writable; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return { sink, lines: () => chunks.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('secret censoring in logs', () => {
  it('censors secret-named fields at the top, one level down and in headers, and keeps the rest', () => {
    const { sink, lines } = capture();
    const logger = createLogger('info', sink);
    const secret = 'bk_live_do_not_log_me_0123456789';
    logger.info(
      {
        apiKey: secret,
        key: secret,
        tenantId: 'acme',
        headers: { authorization: `Bearer ${secret}`, 'X-Api-Key': secret, accept: 'json' },
        config: { redisUrl: `redis://:${secret}@h:6379`, databaseUrl: `postgres://u:${secret}@h/db`, stripeSecretKey: secret, grpcPort: 9191 },
        request: { apiKey: secret, headers: { authorization: secret }, path: '/v1/items' },
      },
      'hello',
    );
    const [line] = lines();
    expect(JSON.stringify(line)).not.toContain(secret);
    expect(line).toMatchObject({
      apiKey: '[redacted]',
      key: '[redacted]',
      tenantId: 'acme',
      headers: { authorization: '[redacted]', 'X-Api-Key': '[redacted]', accept: 'json' },
      config: { redisUrl: '[redacted]', databaseUrl: '[redacted]', stripeSecretKey: '[redacted]', grpcPort: 9191 },
      request: { apiKey: '[redacted]', headers: { authorization: '[redacted]' }, path: '/v1/items' },
      msg: 'hello',
    });
  });

  it("never changes the caller's object, and returns it as is when nothing needs censoring", () => {
    const plain = { tenantId: 'acme', endpoint: '/v1/items', limit: 10, count: 10, nested: { a: 1 } };
    expect(censorSecrets(plain)).toBe(plain);
    const withSecret = { tenantId: 'acme', nested: { apiKey: 'k' }, other: { b: 2 } };
    const out = censorSecrets(withSecret);
    expect(out).not.toBe(withSecret);
    expect(withSecret.nested.apiKey).toBe('k');
    expect(out).toEqual({ tenantId: 'acme', nested: { apiKey: '[redacted]' }, other: { b: 2 } });
    expect(out.other).toBe(withSecret.other);
  });

  it('leaves errors to the error serializer, with their secret-named fields censored', () => {
    const { sink, lines } = capture();
    const logger = createLogger('info', sink);
    logger.error({ err: new Error('boom') }, 'failed');
    const withSecret = Object.assign(new TypeError('bad key'), { apiKey: 'bk_live_secret', headers: { authorization: 'Bearer bk_live_secret' }, code: 'E1' });
    logger.error({ err: withSecret }, 'failed again');
    const [plain, censored] = lines();
    expect(plain).toMatchObject({ err: { type: 'Error', message: 'boom' }, msg: 'failed' });
    expect(censored).toMatchObject({ err: { type: 'TypeError', message: 'bad key', apiKey: '[redacted]', headers: { authorization: '[redacted]' }, code: 'E1' } });
    expect(JSON.stringify(censored)).not.toContain('bk_live_secret');
    expect(withSecret.apiKey).toBe('bk_live_secret');
  });

  it("censors a child logger's bindings", () => {
    const { sink, lines } = capture();
    const child = createLogger('info', sink).child({ apiKey: 'bk_live_child', tenantId: 'acme' });
    child.info('hi');
    child.child({ headers: { authorization: 'Bearer bk_live_grandchild' } }).info('deeper');
    const [first, second] = lines();
    expect(first).toMatchObject({ apiKey: '[redacted]', tenantId: 'acme', msg: 'hi' });
    expect(second).toMatchObject({ apiKey: '[redacted]', headers: { authorization: '[redacted]' }, msg: 'deeper' });
  });
});
