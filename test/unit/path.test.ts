import { describe, expect, it } from 'vitest';
import { EndpointMatcher, normalizePath } from '../../src/core/path.js';

describe('normalizePath', () => {
  it.each([
    ['/verify', '/verify'],
    ['/verify?x=1', '/verify'],
    ['/verify#frag', '/verify'],
    ['/Verify', '/verify'],
    ['/VERIFY/', '/verify'],
    ['//verify', '/verify'],
    ['/a/../verify', '/verify'],
    ['/./verify', '/verify'],
    ['/../../verify', '/verify'],
    ['/%76erify', '/verify'],
    ['/api%2Fverify', '/api/verify'],
    ['/api%2fverify', '/api/verify'],
    ['\\verify', '/verify'],
    ['/bad%zzescape', '/bad%zzescape'],
    ['/mixed%zz%2Fok', '/mixed%zz/ok'],
    // Decoded once, these would read differently a second time: they stay encoded (canonical, idempotent).
    ['/%2576erify', '/%2576erify'],
    ['/verify%3Fx=1', '/verify%3fx=1'],
    ['/verify%23frag', '/verify%23frag'],
    ['/%252e%252e/verify', '/%252e%252e/verify'],
    ['/caf%C3%A9%25', '/café%25'],
    ['/broken%C3', '/broken%c3'],
    // A broken byte does not shield the escapes beside it: what decodes, decodes.
    ['/x%FF%2F..%2Fverify', '/verify'],
    ['/%FF%2E%2E/verify', '/%ff../verify'],
    ['/a%C3%2F..%2Fverify', '/verify'],
    ['/caf%FF%C3%A9', '/caf%ffé'],
    ['', '/'],
    ['/', '/'],
    ['?only=query', '/'],
  ])('%s → %s', (raw, expected) => {
    expect(normalizePath(raw)).toBe(expected);
  });
});

describe('EndpointMatcher', () => {
  const m = new EndpointMatcher(['/verify', '/files/*', '/files/big/*', '/Mixed']);

  it('matches exact endpoints case-insensitively and returns the configured name', () => {
    expect(m.match(normalizePath('/VERIFY'))).toBe('/verify');
    expect(m.match(normalizePath('/mixed'))).toBe('/Mixed');
  });

  it('matches prefix patterns, longest first', () => {
    expect(m.match('/files')).toBe('/files/*');
    expect(m.match('/files/a/b')).toBe('/files/*');
    expect(m.match('/files/big/x')).toBe('/files/big/*');
    expect(m.match('/filesystem')).toBeNull();
  });

  it('does not meter other paths', () => {
    expect(m.match('/usage')).toBeNull();
    expect(m.match('/verify/extra')).toBeNull();
  });
});
