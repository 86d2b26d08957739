// The shape of Envoy's CheckResponse, built from a Decision (pure); check-response-encoder.ts puts it on the
// wire. The request side is check-request-decoder.ts: CheckRequest bytes → RawHttpRequest.

import type { Decision, RateLimitInfo } from '../core/decide.js';

interface HeaderValueOption {
  header: { key: string; value: string };
  append_action: 'OVERWRITE_IF_EXISTS_OR_ADD';
}

// google.protobuf.Value comes from protobufjs's built-in well-known types, whose field names are camelCase
// whatever `keepCase` says: `string_value` would be silently dropped on the wire.
interface StructValue {
  stringValue?: string;
  boolValue?: boolean;
}

export interface CheckResponseMessage {
  status: { code: number; message?: string };
  ok_response?: {
    headers: HeaderValueOption[];
    headers_to_remove: string[];
    response_headers_to_add: HeaderValueOption[];
  };
  denied_response?: {
    /** A number when encoding; decodes as the enum name (see protos.ts httpStatusNumber). */
    status: { code: number | string };
    headers: HeaderValueOption[];
    body: string;
  };
  dynamic_metadata?: { fields: Record<string, StructValue> };
}

/** Header names the server sets upstream; a client's own copies are overwritten or removed. */
export const TENANT_ID_HEADER = 'x-tenant-id';
export const TENANT_TIER_HEADER = 'x-tenant-tier';
export const DEGRADED_HEADER = 'x-usage-limiter-degraded';

// Every header option overwrites: `append_action` is honoured by every Envoy since 1.18 (before it, the
// deprecated `append` defaulted to true and duplicated headers). `append` itself is never set.
function header(key: string, value: string): HeaderValueOption {
  return { header: { key, value }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' };
}

function rateLimitHeaders(info: RateLimitInfo | null, retryAfterS: number | null): HeaderValueOption[] {
  const out: HeaderValueOption[] = [];
  if (info !== null) {
    out.push(
      header('X-RateLimit-Limit', String(info.limit)),
      header('X-RateLimit-Remaining', String(info.remaining)),
      header('X-RateLimit-Reset', String(info.resetEpochS)),
    );
  }
  if (retryAfterS !== null) out.push(header('Retry-After', String(retryAfterS)));
  return out;
}

const bodyHeads = new Map<string, { message: string; text: string }>();

/** The JSON body of every denial: `{"code","message","requestId"}`. */
export function denialBody(code: string, message: string, requestId: string): string {
  // For a code whose message is fixed, only the request id varies: the rest is serialised once (a third of
  // the cost of stringifying the object on every 429). A code's first message is the one kept; a message
  // that differs from it (the quota denial names the usage and the limit) is serialised each time.
  // JSON.stringify still escapes every part.
  let head = bodyHeads.get(code);
  if (head === undefined) {
    head = { message, text: bodyHead(code, message) };
    if (bodyHeads.size < 64) bodyHeads.set(code, head);
  }
  return `${head.message === message ? head.text : bodyHead(code, message)}${JSON.stringify(requestId)}}`;
}

function bodyHead(code: string, message: string): string {
  return `{"code":${JSON.stringify(code)},"message":${JSON.stringify(message)},"requestId":`;
}

export function toCheckResponse(decision: Decision, requestId: string): CheckResponseMessage {
  if (decision.outcome === 'deny') {
    return {
      status: { code: decision.grpcCode, message: decision.code },
      denied_response: {
        status: { code: decision.httpStatus },
        headers: [
          ...rateLimitHeaders(decision.rateLimit, decision.retryAfterS),
          header('Content-Type', 'application/json; charset=utf-8'),
        ],
        body: denialBody(decision.code, decision.message, requestId),
      },
    };
  }
  const headers = [header(TENANT_ID_HEADER, decision.tenantId), header(TENANT_TIER_HEADER, decision.tierId)];
  // The key must not reach the upstream; neither may a client's attempt to claim a degraded pass.
  const headersToRemove: string[] = decision.keyHeader === 'both' ? ['x-api-key', 'authorization'] : [decision.keyHeader];
  if (decision.degraded) headers.push(header(DEGRADED_HEADER, 'true'));
  else headersToRemove.push(DEGRADED_HEADER);

  const fields: Record<string, StructValue> = {
    tenant_id: { stringValue: decision.tenantId },
    tier: { stringValue: decision.tierId },
    request_id: { stringValue: requestId },
    reserved: { boolValue: decision.metering !== null },
    degraded: { boolValue: decision.degraded },
  };
  if (decision.metering !== null) {
    fields.endpoint = { stringValue: decision.metering.endpoint };
    fields.period = { stringValue: decision.metering.period };
  }
  return {
    status: { code: 0 },
    ok_response: {
      headers,
      headers_to_remove: headersToRemove,
      response_headers_to_add: rateLimitHeaders(decision.rateLimit, null),
    },
    dynamic_metadata: { fields },
  };
}
