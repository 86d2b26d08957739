// The reference reading of a CheckRequest: the full protobufjs decode (proto-loader, keepCase) mapped to a
// RawHttpRequest. The server no longer runs this (src/grpc/check-request-decoder.ts reads only the fields it
// uses, straight from the bytes); tests hold the selective decoder to it.
import type { RawHttpRequest } from '../../src/core/request.js';

/** The parts of envoy.service.auth.v3.CheckRequest the server reads (proto-loader, keepCase). */
export interface CheckRequestMessage {
  attributes?: {
    request?: {
      http?: {
        id?: string;
        method?: string;
        path?: string;
        headers?: Record<string, string>;
        header_map?: { headers?: Array<{ key?: string; value?: string; raw_value?: Uint8Array }> };
      };
    };
  };
}

const decoder = new TextDecoder('utf-8', { fatal: false });

/** Reads method, path, id and headers; prefers the `headers` map, falls back to `header_map`. */
export function fromCheckRequest(req: CheckRequestMessage | null | undefined): RawHttpRequest {
  const http = req?.attributes?.request?.http;
  const headers = new Map<string, string>();
  const plain = http?.headers;
  if (plain !== undefined && plain !== null && typeof plain === 'object') {
    for (const name of Object.keys(plain)) {
      const value = plain[name];
      if (typeof value === 'string') headers.set(name.toLowerCase(), value);
    }
  }
  const raw = http?.header_map?.headers;
  if (headers.size === 0 && Array.isArray(raw)) {
    for (const h of raw) {
      if (typeof h?.key !== 'string') continue;
      const value =
        typeof h.value === 'string' && h.value !== ''
          ? h.value
          : h.raw_value !== undefined
            ? decoder.decode(h.raw_value)
            : '';
      const name = h.key.toLowerCase();
      // Envoy joins repeated headers with commas in the `headers` map; do the same here.
      const prev = headers.get(name);
      headers.set(name, prev === undefined ? value : `${prev},${value}`);
    }
  }
  return {
    method: typeof http?.method === 'string' ? http.method : undefined,
    path: typeof http?.path === 'string' ? http.path : undefined,
    headers,
    id: typeof http?.id === 'string' ? http.id : undefined,
  };
}
