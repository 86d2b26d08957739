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

/** A cursor over one message's bytes [pos, end). */
class Cursor {
  constructor(
    readonly buf: Buffer,
    public pos: number,
    readonly end: number,
  ) {}

  /** A varint as a number; values past 2^53 only matter as lengths, which then fail the bounds check. */
  varint(): number {
    let result = 0;
    let shift = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Truncated('varint runs past the end');
      const b = this.buf[this.pos++] as number;
      result += (b & 0x7f) * shift;
      if (b < 0x80) return result;
      shift *= 128;
    }
    throw new Truncated('varint longer than 10 bytes');
  }

  /** Reads a length prefix and returns the sub-range it covers, moving past it. */
  sub(): Cursor {
    const len = this.varint();
    const start = this.pos;
    if (len > this.end - start) throw new Truncated('length runs past the end');
    this.pos = start + len;
    return new Cursor(this.buf, start, start + len);
  }

  string(): string {
    const s = this.sub();
    return s.buf.toString('utf8', s.pos, s.end);
  }

  skip(wireType: number, fieldNo: number): void {
    switch (wireType) {
      case VARINT:
        this.varint();
        return;
      case FIXED64:
        this.advance(8);
        return;
      case LENGTH_DELIMITED:
        this.sub();
        return;
      case FIXED32:
        this.advance(4);
        return;
      case START_GROUP:
        // Deprecated groups: skip nested fields up to the matching end tag.
        for (;;) {
          const tag = this.varint();
          if ((tag & 7) === END_GROUP) {
            if (tag >>> 3 !== fieldNo) throw new Truncated('mismatched end group');
            return;
          }
          this.skip(tag & 7, tag >>> 3);
        }
      default:
        throw new Truncated(`invalid wire type ${wireType}`);
    }
  }

  private advance(n: number): void {
    if (n > this.end - this.pos) throw new Truncated('fixed field runs past the end');
    this.pos += n;
  }
}

/** What the decoder collects while walking HttpRequest occurrences (merged, as protobuf requires). */
interface HttpState {
  id: string | undefined;
  method: string | undefined;
  path: string | undefined;
  /** Wanted headers from the `headers` map; a later entry with the same key replaces an earlier one. */
  plain: Map<string, string>;
  /** Whether the `headers` map had any entry at all: if so, header_map is not consulted. */
  plainEntries: number;
  /** Wanted headers from header_map, repeated ones joined with commas (as Envoy joins them in `headers`). */
  raw: Map<string, string>;
}

export type CheckRequestDecoder = (buf: Buffer) => RawHttpRequest;

/** Builds the decoder (reading field numbers from the loaded protos once). */
export function createCheckRequestDecoder(): CheckRequestDecoder {
  const n = fieldNumbers();

  /** Reads a header name; returns its lower-case form when it is one of the wanted ones, else null. */
  function wantedName(c: Cursor): string | null {
    const len = c.end - c.pos;
    if (!WANTED_LENGTHS.has(len)) return null;
    const name = c.buf.toString('latin1', c.pos, c.end).toLowerCase();
    return WANTED_HEADERS.has(name) ? name : null;
  }

  function headersEntry(c: Cursor, st: HttpState): void {
    st.plainEntries++;
    let name: string | null = null;
    let sawKey = false;
    // The value's range is kept and decoded only when the entry's key turns out to be wanted (a key may
    // legally come after its value).
    let value: Cursor | null = null;
    while (c.pos < c.end) {
      const tag = c.varint();
      const wt = tag & 7;
      const no = tag >>> 3;
      if (no === MAP_KEY && wt === LENGTH_DELIMITED) {
        sawKey = true;
        name = wantedName(c.sub());
      } else if (no === MAP_VALUE && wt === LENGTH_DELIMITED) value = c.sub();
      else c.skip(wt, no);
    }
    if (sawKey && name !== null) st.plain.set(name, value === null ? '' : value.buf.toString('utf8', value.pos, value.end));
  }

  function headerValue(c: Cursor, st: HttpState): void {
    let name: string | null = null;
    let value = '';
    let raw: string | null = null;
    while (c.pos < c.end) {
      const tag = c.varint();
      const wt = tag & 7;
      const no = tag >>> 3;
      if (no === n.headerKey && wt === LENGTH_DELIMITED) name = wantedName(c.sub());
      else if (no === n.headerValue && wt === LENGTH_DELIMITED) value = c.string();
      else if (no === n.headerRawValue && wt === LENGTH_DELIMITED) {
        // TextDecoder, as the full mapping decodes raw_value: it drops a leading byte-order mark.
        const r = c.sub();
        raw = rawDecoder.decode(r.buf.subarray(r.pos, r.end));
      }
      else c.skip(wt, no);
    }
    if (name === null) return;
    const v = value !== '' ? value : (raw ?? '');
    const prev = st.raw.get(name);
    st.raw.set(name, prev === undefined ? v : `${prev},${v}`);
  }

  function httpRequest(c: Cursor, st: HttpState): void {
    while (c.pos < c.end) {
      const tag = c.varint();
      const wt = tag & 7;
      const no = tag >>> 3;
      if (wt !== LENGTH_DELIMITED) c.skip(wt, no);
      else if (no === n.method) st.method = c.string();
      else if (no === n.path) st.path = c.string();
      else if (no === n.id) st.id = c.string();
      else if (no === n.headers) headersEntry(c.sub(), st);
      else if (no === n.headerMap) each(c.sub(), n.headerMapHeaders, (h) => headerValue(h, st));
      else c.skip(wt, no);
    }
  }

  /** Walks `c` and calls `inner` on every occurrence of field `field` (a message). */
  function each(c: Cursor, field: number, inner: (sub: Cursor) => void): void {
    while (c.pos < c.end) {
      const tag = c.varint();
      const wt = tag & 7;
      const no = tag >>> 3;
      if (no === field && wt === LENGTH_DELIMITED) inner(c.sub());
      else c.skip(wt, no);
    }
  }

  return (buf) => {
    const st: HttpState = { id: undefined, method: undefined, path: undefined, plain: new Map(), plainEntries: 0, raw: new Map() };
    each(new Cursor(buf, 0, buf.length), n.attributes, (attrs) =>
      each(attrs, n.request, (req) => each(req, n.http, (http) => httpRequest(http, st))),
    );
    return {
      method: st.method,
      path: st.path,
      id: st.id,
      headers: st.plainEntries > 0 ? st.plain : st.raw,
    };
  };
}
