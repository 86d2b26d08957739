// A CheckResponse encoder for the one shape this server answers (check-mapping.ts toCheckResponse): status,
// then a denied or an ok response, then the dynamic metadata of string and bool values.
//
// Why: protobufjs's path (proto-loader's serializer: `fromObject` builds a second message tree, then
// `encode` sizes and writes it through a chain of writer operations) allocated about an eighth of every
// byte the Check allocated. This writes the wire format straight into one scratch buffer and copies the
// result out once. Field numbers and the append-action enum value are read from the loaded Envoy protos,
// and a test decodes its output with the full decoder and compares it with protobufjs's own encoding. Like
// protobufjs, every field the message object sets is written, zero values included.
import type { CheckResponseMessage } from './check-mapping.js';
import { httpStatusNumber, protoFieldNumber, protoNestedEnumValue } from './protos.js';

const VARINT = 0;
const LENGTH_DELIMITED = 2;
/** Room for a length prefix before a nested message is written (a varint of up to 2^35). */
const LENGTH_ROOM = 5;

interface HeaderOption {
  header: { key: string; value: string };
  append_action: string;
}

class Writer {
  buf = Buffer.allocUnsafe(16 * 1024);
  pos = 0;

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(bigger, 0, 0, this.pos);
    this.buf = bigger;
  }

  varint(v: number): void {
    this.ensure(10);
    // Negative int32s are sign-extended to 10 bytes, as protobuf requires.
    let n = v < 0 ? BigInt.asUintN(64, BigInt(v)) : v;
    if (typeof n === 'bigint') {
      while (n > 0x7fn) {
        this.buf[this.pos++] = Number(n & 0x7fn) | 0x80;
        n >>= 7n;
      }
      this.buf[this.pos++] = Number(n);
      return;
    }
    while (n > 0x7f) {
      this.buf[this.pos++] = (n % 128) | 0x80;
      n = Math.floor(n / 128);
    }
    this.buf[this.pos++] = n;
  }

  tag(field: number, wireType: number): void {
    this.varint(field * 8 + wireType);
  }

  string(field: number, s: string): void {
    this.tag(field, LENGTH_DELIMITED);
    const max = s.length * 3;
    this.ensure(LENGTH_ROOM + max);
    if (max < 128) {
      // One length byte is enough: write the bytes after it and fill it in.
      const at = this.pos++;
      const n = this.buf.write(s, this.pos, 'utf8');
      this.buf[at] = n;
      this.pos += n;
    } else {
      const n = Buffer.byteLength(s, 'utf8');
      this.varint(n);
      this.pos += this.buf.write(s, this.pos, 'utf8');
    }
  }

  /**
   * Starts a nested message: writes its tag and leaves room for its length. The caller writes the fields,
   * then passes the returned position to `close`. (A pair of calls rather than a callback: the encoder runs
   * on every Check, and a closure per nested message was most of its garbage.)
   */
  open(field: number): number {
    this.tag(field, LENGTH_DELIMITED);
    this.ensure(LENGTH_ROOM);
    const start = this.pos;
    this.pos += LENGTH_ROOM;
    return start;
  }

  /** Ends the message `open` started at `start`: puts its length in front of its fields. */
  close(start: number): void {
    const len = this.pos - start - LENGTH_ROOM;
    let prefix = 1;
    for (let v = len; v > 0x7f; v = Math.floor(v / 128)) prefix++;
    // Move the body back so it follows a prefix of the exact size, then write the prefix into the room
    // reserved for it (no `ensure` here: a reallocation now would copy only what precedes `start`).
    if (prefix < LENGTH_ROOM) this.buf.copyWithin(start + prefix, start + LENGTH_ROOM, this.pos);
    let at = start;
    for (let v = len; ; v = Math.floor(v / 128)) {
      if (v <= 0x7f) {
        this.buf[at++] = v;
        break;
      }
      this.buf[at++] = (v % 128) | 0x80;
    }
    this.pos = start + prefix + len;
  }

  take(): Buffer {
    const out = Buffer.allocUnsafe(this.pos);
    this.buf.copy(out, 0, 0, this.pos);
    this.pos = 0;
    return out;
  }
}

export type CheckResponseEncoder = (res: CheckResponseMessage) => Buffer;

export function createCheckResponseEncoder(): CheckResponseEncoder {
  const f = (type: string, field: string) => protoFieldNumber(type, field);
  const N = {
    status: f('envoy.service.auth.v3.CheckResponse', 'status'),
    denied: f('envoy.service.auth.v3.CheckResponse', 'denied_response'),
    ok: f('envoy.service.auth.v3.CheckResponse', 'ok_response'),
    metadata: f('envoy.service.auth.v3.CheckResponse', 'dynamic_metadata'),
    statusCode: f('google.rpc.Status', 'code'),
    statusMessage: f('google.rpc.Status', 'message'),
    deniedStatus: f('envoy.service.auth.v3.DeniedHttpResponse', 'status'),
    deniedHeaders: f('envoy.service.auth.v3.DeniedHttpResponse', 'headers'),
    deniedBody: f('envoy.service.auth.v3.DeniedHttpResponse', 'body'),
    httpStatusCode: f('envoy.type.v3.HttpStatus', 'code'),
    okHeaders: f('envoy.service.auth.v3.OkHttpResponse', 'headers'),
    okRemove: f('envoy.service.auth.v3.OkHttpResponse', 'headers_to_remove'),
    okResponseHeaders: f('envoy.service.auth.v3.OkHttpResponse', 'response_headers_to_add'),
    optionHeader: f('envoy.config.core.v3.HeaderValueOption', 'header'),
    optionAppendAction: f('envoy.config.core.v3.HeaderValueOption', 'append_action'),
    headerKey: f('envoy.config.core.v3.HeaderValue', 'key'),
    headerValue: f('envoy.config.core.v3.HeaderValue', 'value'),
    structFields: f('google.protobuf.Struct', 'fields'),
    // protobufjs's built-in google.protobuf.Value has camelCase field names.
    stringValue: f('google.protobuf.Value', 'stringValue'),
    boolValue: f('google.protobuf.Value', 'boolValue'),
  };
  const appendActions = new Map<string, number>();
  const appendAction = (name: string): number => {
    let v = appendActions.get(name);
    if (v === undefined) {
      v = protoNestedEnumValue('envoy.config.core.v3.HeaderValueOption', 'HeaderAppendAction', name);
      appendActions.set(name, v);
    }
    return v;
  };
  const w = new Writer();

  function headerOptions(field: number, options: readonly HeaderOption[]): void {
    for (const o of options) {
      const option = w.open(field);
      const header = w.open(N.optionHeader);
      w.string(N.headerKey, o.header.key);
      w.string(N.headerValue, o.header.value);
      w.close(header);
      w.tag(N.optionAppendAction, VARINT);
      w.varint(appendAction(o.append_action));
      w.close(option);
    }
  }

  return (res) => {
    w.pos = 0;
    const status = w.open(N.status);
    w.tag(N.statusCode, VARINT);
    w.varint(res.status.code);
    if (res.status.message !== undefined) w.string(N.statusMessage, res.status.message);
    w.close(status);
    const denied = res.denied_response;
    if (denied !== undefined) {
      const d = w.open(N.denied);
      const httpStatus = w.open(N.deniedStatus);
      w.tag(N.httpStatusCode, VARINT);
      w.varint(httpStatusNumber(denied.status.code));
      w.close(httpStatus);
      headerOptions(N.deniedHeaders, denied.headers);
      w.string(N.deniedBody, denied.body);
      w.close(d);
    }
    const ok = res.ok_response;
    if (ok !== undefined) {
      const o = w.open(N.ok);
      headerOptions(N.okHeaders, ok.headers);
      for (const name of ok.headers_to_remove) w.string(N.okRemove, name);
      headerOptions(N.okResponseHeaders, ok.response_headers_to_add);
      w.close(o);
    }
    const fields = res.dynamic_metadata?.fields;
    if (fields !== undefined) {
      const m = w.open(N.metadata);
      for (const key of Object.keys(fields)) {
        const v = fields[key];
        if (v === undefined) continue;
        // A map entry: key = 1, value = 2.
        const entry = w.open(N.structFields);
        w.string(1, key);
        const value = w.open(2);
        if (v.stringValue !== undefined) w.string(N.stringValue, v.stringValue);
        else if (v.boolValue !== undefined) {
          w.tag(N.boolValue, VARINT);
          w.varint(v.boolValue ? 1 : 0);
        }
        w.close(value);
        w.close(entry);
      }
      w.close(m);
    }
    return w.take();
  };
}
