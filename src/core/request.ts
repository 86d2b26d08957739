// The plain input the decision core works on, and API key extraction. The gRPC edge builds a CheckInput
// from a CheckRequest; nothing here knows about protobuf.

import { MAX_PATH_LENGTH, normalizePath } from './path.js';

export const MAX_API_KEY_LENGTH = 256;

/** Where the key came from; `both`: the same key in `x-api-key` and as `authorization`'s Bearer token. */
export type KeyHeader = 'x-api-key' | 'authorization' | 'both';

export type KeyPresentation =
  | { readonly kind: 'missing' }
  /** Present but unusable (too long, control characters): INVALID_API_KEY without a lookup. */
  | { readonly kind: 'malformed'; readonly header: KeyHeader }
  | { readonly kind: 'present'; readonly key: string; readonly header: KeyHeader };

export interface CheckInput {
  readonly method: string;
  /** Normalised (see path.ts); used for metering and logs. */
  readonly path: string;
  readonly key: KeyPresentation;
  readonly requestId: string;
}

/** What the edge could read from a CheckRequest; any of it may be missing or odd. */
export interface RawHttpRequest {
  readonly method: string | undefined;
  readonly path: string | undefined;
  /** Lower-case header names, as Envoy sends them. */
  readonly headers: ReadonlyMap<string, string>;
  readonly id: string | undefined;
}

export type InputResult =
  | { readonly ok: true; readonly input: CheckInput }
  | { readonly ok: false; readonly requestId: string; readonly reason: string };

// Printable ASCII without spaces: what API keys are made of. Anything else cannot be a key we issued.
const KEY_CHARS = /^[\x21-\x7e]+$/;
const METHOD = /^[A-Z][A-Z0-9_-]{0,31}$/;
const REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

function presentKey(raw: string, header: KeyHeader): KeyPresentation {
  const key = raw.trim();
  if (key === '') return { kind: 'missing' };
  if (key.length > MAX_API_KEY_LENGTH || !KEY_CHARS.test(key)) return { kind: 'malformed', header };
  return { kind: 'present', key, header };
}

/** `x-api-key` wins over `authorization: Bearer <key>`; other authorization schemes are not keys. */
export function extractKey(headers: ReadonlyMap<string, string>): KeyPresentation {
  const direct = headers.get('x-api-key');
  const auth = headers.get('authorization');
  const bearer = auth === undefined ? undefined : /^\s*bearer\s+(.*)$/i.exec(auth)?.[1];
  if (direct !== undefined && direct.trim() !== '') {
    // The same key sent twice must leave the request twice: the upstream never sees it. A different
    // Bearer token is the client's business with the upstream and stays.
    return presentKey(direct, bearer !== undefined && bearer.trim() === direct.trim() ? 'both' : 'x-api-key');
  }
  if (bearer !== undefined) return presentKey(bearer, 'authorization');
  return { kind: 'missing' };
}

/**
 * Validates what Envoy sent. A request without a method or path cannot be judged: it is denied with 400
 * rather than guessed at. The request id is echoed in bodies, so it is only taken when it is printable.
 */
export function toCheckInput(raw: RawHttpRequest, fallbackId: () => string): InputResult {
  const headerId = raw.headers.get('x-request-id');
  const requestId =
    headerId !== undefined && REQUEST_ID.test(headerId)
      ? headerId
      : raw.id !== undefined && REQUEST_ID.test(raw.id)
        ? raw.id
        : fallbackId();
  const method = raw.method?.toUpperCase();
  if (method === undefined || !METHOD.test(method)) {
    return { ok: false, requestId, reason: 'missing or invalid method' };
  }
  if (raw.path === undefined || raw.path === '') return { ok: false, requestId, reason: 'missing path' };
  // The bound is on the path alone: the query (which Envoy's path carries, and Envoy lets reach 60 KiB of
  // headers) is dropped unread, and a long one is the client's business with the upstream.
  const q = raw.path.indexOf('?');
  const path = q >= 0 ? raw.path.slice(0, q) : raw.path;
  if (path.length > MAX_PATH_LENGTH) return { ok: false, requestId, reason: 'oversized path' };
  return {
    ok: true,
    input: { method, path: normalizePath(path), key: extractKey(raw.headers), requestId },
  };
}
