// A CheckRequest decoder that reads only what the Check uses: the HTTP request's method, path, id and
// three headers (x-api-key, authorization, x-request-id). Everything else Envoy sends (source and
// destination peers, TLS session, metadata, the other dozen headers, the body) is skipped by length
// without being decoded, and nothing is built for it.
//
// Why: the full decode (protobufjs through proto-loader) built the whole message tree, a string for every
// header name and value and a JS object per nested message, then the edge threw nearly all of it away; it
// was the largest item of the Check's own CPU profile and a tenth of its allocations. Field numbers are
// read from the loaded Envoy protos at start (nothing is copied from the .proto files), and the result is
// the same RawHttpRequest the full decode gives (test/helpers/full-check-request.ts), which a test checks on
// random and real-shaped messages.
//
// Protobuf rules honoured: fields in any order; an embedded message that appears more than once is merged
// (later scalars win, map entries accumulate and a repeated key takes the later value); unknown fields of
// every wire type are skipped; a known field with an unexpected wire type is skipped too rather than
// misread. Truncated or malformed input throws, as the full decoder does (grpc-js then answers INTERNAL).
import type { RawHttpRequest } from '../core/request.js';
import { protoFieldNumber as fieldNumber } from './protos.js';

/** The only headers the Check reads (core/request.ts). */
const WANTED_HEADERS = new Set(['x-api-key', 'authorization', 'x-request-id']);
const rawDecoder = new TextDecoder('utf-8', { fatal: false });
const WANTED_LENGTHS = new Set([...WANTED_HEADERS].map((h) => Buffer.byteLength(h)));

const VARINT = 0;
const FIXED64 = 1;
const LENGTH_DELIMITED = 2;
const START_GROUP = 3;
const END_GROUP = 4;
const FIXED32 = 5;
/** Every protobuf map entry is a message with the key as field 1 and the value as field 2. */
const MAP_KEY = 1;
const MAP_VALUE = 2;

interface FieldNumbers {
  attributes: number;
  request: number;
  http: number;
  id: number;
  method: number;
  headers: number;
  path: number;
  headerMap: number;
  headerMapHeaders: number;
  headerKey: number;
  headerValue: number;
  headerRawValue: number;
}

let numbers: FieldNumbers | null = null;

function fieldNumbers(): FieldNumbers {
  const ctx = 'envoy.service.auth.v3.AttributeContext';
  numbers ??= {
    attributes: fieldNumber('envoy.service.auth.v3.CheckRequest', 'attributes'),
    request: fieldNumber(ctx, 'request'),
    http: fieldNumber(`${ctx}.Request`, 'http'),
    id: fieldNumber(`${ctx}.HttpRequest`, 'id'),
    method: fieldNumber(`${ctx}.HttpRequest`, 'method'),
    headers: fieldNumber(`${ctx}.HttpRequest`, 'headers'),
    path: fieldNumber(`${ctx}.HttpRequest`, 'path'),
    headerMap: fieldNumber(`${ctx}.HttpRequest`, 'header_map'),
    headerMapHeaders: fieldNumber('envoy.config.core.v3.HeaderMap', 'headers'),
    headerKey: fieldNumber('envoy.config.core.v3.HeaderValue', 'key'),
    headerValue: fieldNumber('envoy.config.core.v3.HeaderValue', 'value'),
    headerRawValue: fieldNumber('envoy.config.core.v3.HeaderValue', 'raw_value'),
  };
  return numbers;
}

class Truncated extends Error {
  constructor(what: string) {
    super(`CheckRequest is malformed: ${what}`);
  }
}

/**
 * The read position in the request's bytes. One per decode: nested messages are walked with their end
 * offsets as plain numbers, so a request's dozen header entries cost no objects of their own.
 */
class Reader {
  pos = 0;
  constructor(readonly buf: Buffer) {}

  /** A varint as a number; values past 2^53 only matter as lengths, which then fail the bounds check. */
  varint(end: number): number {
    let result = 0;
    let shift = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= end) throw new Truncated('varint runs past the end');
      const b = this.buf[this.pos++] as number;
      result += (b & 0x7f) * shift;
      if (b < 0x80) return result;
      shift *= 128;
    }
    throw new Truncated('varint longer than 10 bytes');
  }

  /** Reads a length prefix; returns the end of the field it covers (the field starts at `pos`). */
  length(end: number): number {
    const len = this.varint(end);
    if (len > end - this.pos) throw new Truncated('length runs past the end');
    return this.pos + len;
  }

  /** A length-delimited field as a string; `pos` moves past it. */
  string(end: number): string {
    const fieldEnd = this.length(end);
    const s = this.buf.toString('utf8', this.pos, fieldEnd);
    this.pos = fieldEnd;
    return s;
  }

  skip(wireType: number, fieldNo: number, end: number): void {
    switch (wireType) {
      case VARINT:
        this.varint(end);
        return;
      case FIXED64:
        this.advance(8, end);
        return;
      case LENGTH_DELIMITED:
        this.pos = this.length(end);
        return;
      case FIXED32:
        this.advance(4, end);
        return;
      case START_GROUP:
        // Deprecated groups: skip nested fields up to the matching end tag.
        for (;;) {
          const tag = this.varint(end);
          if ((tag & 7) === END_GROUP) {
            if (tag >>> 3 !== fieldNo) throw new Truncated('mismatched end group');
            return;
          }
          this.skip(tag & 7, tag >>> 3, end);
        }
      default:
        throw new Truncated(`invalid wire type ${wireType}`);
    }
  }

  private advance(n: number, end: number): void {
    if (n > end - this.pos) throw new Truncated('fixed field runs past the end');
    this.pos += n;
  }
}

/** What the decoder collects while walking HttpRequest occurrences (merged, as protobuf requires). */
interface HttpState {
  id: string | undefined;
  method: string | undefined;
  path: string | undefined;
  /**
   * Wanted headers from the `headers` map; a later entry with the same key replaces an earlier one. Made
   * when the first wanted header is found (most requests carry one or two of the three).
   */
  plain: Map<string, string> | null;
  /** Whether the `headers` map had any entry at all: if so, header_map is not consulted. */
  plainEntries: number;
  /** Wanted headers from header_map, repeated ones joined with commas (as Envoy joins them in `headers`). */
  raw: Map<string, string> | null;
}

/** The headers of a request that carried none of the wanted ones. Never written to. */
const NO_HEADERS: ReadonlyMap<string, string> = new Map();

export type CheckRequestDecoder = (buf: Buffer) => RawHttpRequest;

/** Builds the decoder (reading field numbers from the loaded protos once). */
export function createCheckRequestDecoder(): CheckRequestDecoder {
  const n = fieldNumbers();

  /**
   * Reads a header name (a length-delimited field at `pos`, inside a message ending at `end`) and moves past
   * it: its lower-case form when it is one of the wanted ones, else null.
   */
  function wantedName(r: Reader, end: number): string | null {
    const nameEnd = r.length(end);
    const start = r.pos;
    r.pos = nameEnd;
    if (!WANTED_LENGTHS.has(nameEnd - start)) return null;
    const name = r.buf.toString('latin1', start, nameEnd).toLowerCase();
    return WANTED_HEADERS.has(name) ? name : null;
  }

  /** One entry of the `headers` map, in [pos, end). */
  function headersEntry(r: Reader, end: number, st: HttpState): void {
    st.plainEntries++;
    let name: string | null = null;
    let sawKey = false;
    // The value's range is kept and decoded only when the entry's key turns out to be wanted (a key may
    // legally come after its value).
    let valueStart = -1;
    let valueEnd = -1;
    while (r.pos < end) {
      const tag = r.varint(end);
      const wt = tag & 7;
      const no = tag >>> 3;
      if (no === MAP_KEY && wt === LENGTH_DELIMITED) {
        sawKey = true;
        name = wantedName(r, end);
      } else if (no === MAP_VALUE && wt === LENGTH_DELIMITED) {
        valueEnd = r.length(end);
        valueStart = r.pos;
        r.pos = valueEnd;
      } else r.skip(wt, no, end);
    }
    if (sawKey && name !== null) {
      st.plain ??= new Map();
      st.plain.set(name, valueStart < 0 ? '' : r.buf.toString('utf8', valueStart, valueEnd));
    }
  }

  /** One HeaderValue of header_map, in [pos, end). */
  function headerValue(r: Reader, end: number, st: HttpState): void {
    let name: string | null = null;
    let value = '';
    let raw: string | null = null;
    while (r.pos < end) {
      const tag = r.varint(end);
      const wt = tag & 7;
      const no = tag >>> 3;
      if (no === n.headerKey && wt === LENGTH_DELIMITED) name = wantedName(r, end);
      else if (no === n.headerValue && wt === LENGTH_DELIMITED) value = r.string(end);
      else if (no === n.headerRawValue && wt === LENGTH_DELIMITED) {
        // TextDecoder, as the full mapping decodes raw_value: it drops a leading byte-order mark.
        const rawEnd = r.length(end);
        raw = rawDecoder.decode(r.buf.subarray(r.pos, rawEnd));
        r.pos = rawEnd;
      } else r.skip(wt, no, end);
    }
    if (name === null) return;
    const v = value !== '' ? value : (raw ?? '');
    st.raw ??= new Map();
    const prev = st.raw.get(name);
    st.raw.set(name, prev === undefined ? v : `${prev},${v}`);
  }

  /** An HttpRequest, in [pos, end). */
  function httpRequest(r: Reader, end: number, st: HttpState): void {
    while (r.pos < end) {
      const tag = r.varint(end);
      const wt = tag & 7;
      const no = tag >>> 3;
      if (wt !== LENGTH_DELIMITED) r.skip(wt, no, end);
      else if (no === n.method) st.method = r.string(end);
      else if (no === n.path) st.path = r.string(end);
      else if (no === n.id) st.id = r.string(end);
      else if (no === n.headers) headersEntry(r, r.length(end), st);
      else if (no === n.headerMap) {
        const mapEnd = r.length(end);
        while (r.pos < mapEnd) {
          const t = r.varint(mapEnd);
          if (t >>> 3 === n.headerMapHeaders && (t & 7) === LENGTH_DELIMITED) headerValue(r, r.length(mapEnd), st);
          else r.skip(t & 7, t >>> 3, mapEnd);
        }
      } else r.skip(wt, no, end);
    }
  }

  /**
   * Walks the message in [pos, end) and, for every occurrence of the message field `path[depth]`, walks
   * into it; at the end of the path, reads an HttpRequest. (CheckRequest → attributes → request → http.)
   */
  function walk(r: Reader, end: number, path: readonly number[], depth: number, st: HttpState): void {
    const field = path[depth];
    while (r.pos < end) {
      const tag = r.varint(end);
      const wt = tag & 7;
      const no = tag >>> 3;
      if (no === field && wt === LENGTH_DELIMITED) {
        const subEnd = r.length(end);
        if (depth === path.length - 1) httpRequest(r, subEnd, st);
        else walk(r, subEnd, path, depth + 1, st);
      } else r.skip(wt, no, end);
    }
  }

  const toHttp = [n.attributes, n.request, n.http];
  return (buf) => {
    const st: HttpState = { id: undefined, method: undefined, path: undefined, plain: null, plainEntries: 0, raw: null };
    walk(new Reader(buf), buf.length, toHttp, 0, st);
    return {
      method: st.method,
      path: st.path,
      id: st.id,
      headers: (st.plainEntries > 0 ? st.plain : st.raw) ?? NO_HEADERS,
    };
  };
}
