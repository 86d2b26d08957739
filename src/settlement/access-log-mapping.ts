// The only code that knows the shape of Envoy's access-log stream (envoy.service.accesslog.v3). Pure: one
// HTTPAccessLogEntry in, what settlement must do with it out. The entry carries, in the ext_authz filter's
// dynamic metadata, what the Check put there (grpc/check-mapping.ts): tenant, endpoint, period, request id
// and whether a unit was reserved; and how the request ended (the response code, 0 or absent when the
// upstream never answered).

import type { SettleRequest } from '../store/types.js';

/** The namespace Envoy files ext_authz dynamic metadata under. */
export const EXT_AUTHZ_NAMESPACE = 'envoy.filters.http.ext_authz';

// google.protobuf.Struct and Value come from protobufjs's built-in well-known types, whose field names are
// camelCase whatever `keepCase` says (see check-mapping.ts).
interface StructValue {
  stringValue?: string;
  boolValue?: boolean;
  numberValue?: number;
}
interface Struct {
  fields?: Record<string, StructValue | undefined>;
}

/** The parts of envoy.data.accesslog.v3.HTTPAccessLogEntry settlement reads (proto-loader, keepCase). */
export interface HttpAccessLogEntryMessage {
  common_properties?: { metadata?: { filter_metadata?: Record<string, Struct | undefined> } };
  /** google.protobuf.UInt32Value; absent or 0 when no response was sent upstream-side. */
  response?: { response_code?: { value?: number } };
}

/** envoy.service.accesslog.v3.StreamAccessLogsMessage; `identifier` comes with the first message only. */
export interface StreamAccessLogsMessage {
  identifier?: { log_name?: string };
  http_logs?: { log_entry?: HttpAccessLogEntryMessage[] };
  tcp_logs?: unknown;
}

export type EntryMapping =
  | { readonly kind: 'settle'; readonly request: SettleRequest }
  /** Nothing to settle: no ext_authz metadata, nothing reserved, or metadata this server did not write. */
  | { readonly kind: 'skip'; readonly reason: 'no_metadata' | 'not_reserved' | 'malformed' };

const PERIOD = /^\d{4}-(0[1-9]|1[0-2])$/;
const MAX_FIELD = 256;

function text(fields: Record<string, StructValue | undefined>, name: string): string | null {
  const v = fields[name]?.stringValue;
  return typeof v === 'string' && v !== '' && v.length <= MAX_FIELD ? v : null;
}

/** A request the upstream failed: a 5xx, or no response at all (reset, timeout before headers, client gone). */
export function upstreamFailed(responseCode: number | undefined): boolean {
  return responseCode === undefined || responseCode === 0 || responseCode >= 500;
}

export function fromAccessLogEntry(entry: HttpAccessLogEntryMessage | null | undefined): EntryMapping {
  const fields = entry?.common_properties?.metadata?.filter_metadata?.[EXT_AUTHZ_NAMESPACE]?.fields;
  if (fields === undefined || fields === null || typeof fields !== 'object') return { kind: 'skip', reason: 'no_metadata' };
  if (fields.reserved?.boolValue !== true) return { kind: 'skip', reason: 'not_reserved' };
  const tenantId = text(fields, 'tenant_id');
  const endpoint = text(fields, 'endpoint');
  const period = text(fields, 'period');
  const requestId = text(fields, 'request_id');
  if (tenantId === null || endpoint === null || requestId === null || period === null || !PERIOD.test(period)) {
    return { kind: 'skip', reason: 'malformed' };
  }
  const code = entry?.response?.response_code?.value;
  return {
    kind: 'settle',
    request: { tenantId, endpoint, period, requestId, failed: upstreamFailed(typeof code === 'number' ? code : undefined) },
  };
}

/** Every HTTP entry of one stream message (TCP entries carry nothing this server meters). */
export function entriesOf(message: StreamAccessLogsMessage | null | undefined): HttpAccessLogEntryMessage[] {
  const list = message?.http_logs?.log_entry;
  return Array.isArray(list) ? list : [];
}
