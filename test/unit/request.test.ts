import { describe, expect, it } from 'vitest';
import { extractKey, toCheckInput, MAX_API_KEY_LENGTH } from '../../src/core/request.js';

const h = (o: Record<string, string>) => new Map(Object.entries(o));
const fixedId = () => 'generated-id';

describe('extractKey', () => {
  it('reads x-api-key', () => {
    expect(extractKey(h({ 'x-api-key': 'k1' }))).toEqual({ kind: 'present', key: 'k1', header: 'x-api-key' });
  });
  it('reads Authorization: Bearer, any case', () => {
    expect(extractKey(h({ authorization: 'bearer  k2 ' }))).toEqual({ kind: 'present', key: 'k2', header: 'authorization' });
  });
  it('prefers x-api-key over authorization', () => {
    expect(extractKey(h({ 'x-api-key': 'k1', authorization: 'Bearer k2' }))).toEqual({ kind: 'present', key: 'k1', header: 'x-api-key' });
  });

  it('says when the same key came in both headers, so that both are removed', () => {
    expect(extractKey(h({ 'x-api-key': 'k1', authorization: 'bearer  k1 ' }))).toEqual({ kind: 'present', key: 'k1', header: 'both' });
  });
  it('ignores other schemes and empty values', () => {
    expect(extractKey(h({ authorization: 'Basic dXNlcjpwYXNz' }))).toEqual({ kind: 'missing' });
    expect(extractKey(h({ 'x-api-key': '   ' }))).toEqual({ kind: 'missing' });
    expect(extractKey(h({ authorization: 'Bearer ' }))).toEqual({ kind: 'missing' });
    expect(extractKey(h({}))).toEqual({ kind: 'missing' });
  });
  it('treats oversized or non-printable keys as malformed', () => {
    expect(extractKey(h({ 'x-api-key': 'a'.repeat(MAX_API_KEY_LENGTH + 1) }))).toEqual({ kind: 'malformed', header: 'x-api-key' });
    expect(extractKey(h({ 'x-api-key': 'abc\u0000def' }))).toMatchObject({ kind: 'malformed' });
    expect(extractKey(h({ 'x-api-key': 'clé' }))).toMatchObject({ kind: 'malformed' });
  });
});

describe('toCheckInput', () => {
  it('normalises method and path and takes x-request-id', () => {
    const r = toCheckInput({ method: 'get', path: '/Usage?x=1', headers: h({ 'x-request-id': 'rid-1' }), id: 'envoy-id' }, fixedId);
    expect(r).toEqual({ ok: true, input: { method: 'GET', path: '/usage', key: { kind: 'missing' }, requestId: 'rid-1' } });
  });
  it('falls back to the http id, then a generated id', () => {
    expect(toCheckInput({ method: 'GET', path: '/', headers: h({}), id: 'envoy-id' }, fixedId)).toMatchObject({ input: { requestId: 'envoy-id' } });
    expect(toCheckInput({ method: 'GET', path: '/', headers: h({ 'x-request-id': 'bad\nid' }), id: undefined }, fixedId)).toMatchObject({ input: { requestId: 'generated-id' } });
  });
  it('rejects requests with no method or path', () => {
    expect(toCheckInput({ method: undefined, path: '/', headers: h({}), id: undefined }, fixedId)).toMatchObject({ ok: false });
    expect(toCheckInput({ method: 'GET', path: undefined, headers: h({}), id: undefined }, fixedId)).toMatchObject({ ok: false });
    expect(toCheckInput({ method: 'G E T', path: '/', headers: h({}), id: undefined }, fixedId)).toMatchObject({ ok: false });
    expect(toCheckInput({ method: 'GET', path: '/' + 'a'.repeat(10_000), headers: h({}), id: undefined }, fixedId)).toMatchObject({ ok: false });
  });
  it('bounds the path, not the query it carries', () => {
    const longQuery = toCheckInput({ method: 'GET', path: `/usage?q=${'a'.repeat(20_000)}`, headers: h({}), id: undefined }, fixedId);
    expect(longQuery).toMatchObject({ ok: true, input: { path: '/usage' } });
    expect(toCheckInput({ method: 'GET', path: `/${'a'.repeat(10_000)}?q=1`, headers: h({}), id: undefined }, fixedId)).toMatchObject({ ok: false });
  });
});
