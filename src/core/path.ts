// Path normalisation decides which metered endpoint a request hits, so it must not be talked past:
// `/Verify`, `/verify/`, `//verify`, `/a/../verify`, `/%76erify` and `/verify?x=1` all meter as `/verify`.
//
// Rules, in order:
//  1. Drop the fragment (`#...`) and the query string (`?...`).
//  2. Percent-decode once (`%2F` becomes `/`); the bytes of malformed escapes are kept literally (each
//     well-formed sequence beside them is still decoded), and so are `%25`, `%3F`
//     and `%23`: decoded, they would read as an escape, a query or a fragment the next time the path is read,
//     so the result would not be canonical (`/%2576erify` would normalise to `/%76erify`, then to `/verify`).
//  3. Backslashes count as slashes (some upstream frameworks treat them so).
//  4. Collapse repeated slashes; resolve `.` and `..` segments (never above the root).
//  5. Drop a trailing slash (except for `/` itself) and lower-case the result.
// Envoy should normalise too (`normalize_path`, `merge_slashes`); this is the second line of defence.

export const MAX_PATH_LENGTH = 8192;

// Escapes that stay encoded: their characters would mean something else on a second reading.
const KEEP_ENCODED = /(%(?:25|3[fF]|23))/;

function decodeRun(run: string): string {
  try {
    return decodeURIComponent(run);
  } catch {
    return decodeEach(run);
  }
}

// A run with a malformed sequence in it: each well-formed UTF-8 sequence is decoded on its own and only the
// bytes that start no valid sequence stay escaped, so one bad byte cannot shield a `%2F` or `%2E` beside it
// (`/x%FF%2F..%2Fverify` is `/verify`, as `/x%2F..%2Fverify` is).
function decodeEach(run: string): string {
  const escapes = run.match(/%[0-9a-fA-F]{2}/g) ?? [];
  let out = '';
  for (let i = 0; i < escapes.length; ) {
    const lead = Number.parseInt(escapes[i]!.slice(1), 16);
    const len = lead < 0x80 ? 1 : lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
    try {
      out += decodeURIComponent(escapes.slice(i, i + len).join(''));
      i += len;
    } catch {
      out += escapes[i];
      i++;
    }
  }
  return out;
}

function percentDecode(s: string): string {
  if (!s.includes('%')) return s;
  // Each run of escapes is decoded on its own (a broken one stays as it is), around the kept ones; a UTF-8
  // sequence is always one run, and the kept escapes are ASCII, so splitting there never breaks one.
  return s.replace(/(%[0-9a-fA-F]{2})+/g, (run) =>
    run
      .split(KEEP_ENCODED)
      .map((part, i) => (i % 2 === 1 ? part : decodeRun(part)))
      .join(''),
  );
}

// A path the rules leave unchanged: `/`, or slash-separated non-empty segments of lower-case unreserved and
// sub-delimiter characters, none of them `.` or `..`. Envoy sends most paths in this form already
// (normalize_path, merge_slashes), and a Check then pays one regular-expression test instead of the split,
// join and lower-casing below. A `#` is not in the alphabet, so a fragment always takes the full rules.
const CANONICAL = /^(?:\/|(?:\/(?!\.\.?(?:\/|$))[a-z0-9\-._~!$&'()*+,;=:@]+)+)$/;

export function normalizePath(raw: string): string {
  // The query string (which Envoy's path carries) is dropped first, as rule 1 does.
  const q = raw.indexOf('?');
  const p = q >= 0 ? raw.slice(0, q) : raw;
  return CANONICAL.test(p) ? p : canonicalize(p);
}

/** The rules above, applied in full (exported for the test that checks the fast path against it). */
export function canonicalize(raw: string): string {
  let p = raw;
  const hash = p.indexOf('#');
  if (hash >= 0) p = p.slice(0, hash);
  const q = p.indexOf('?');
  if (q >= 0) p = p.slice(0, q);
  p = percentDecode(p).replace(/\\/g, '/');
  const out: string[] = [];
  for (const seg of p.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') out.pop();
    else out.push(seg);
  }
  return `/${out.join('/')}`.toLowerCase();
}

/**
 * Matches normalised paths to configured metered endpoints: exact paths, and `/prefix/*` patterns that
 * cover `/prefix` and everything below it. The longest pattern wins. Returns the endpoint as configured.
 */
export class EndpointMatcher {
  private readonly exact = new Map<string, string>();
  private readonly prefixes: Array<{ prefix: string; endpoint: string }> = [];

  constructor(endpoints: Iterable<string>) {
    for (const endpoint of endpoints) {
      if (endpoint.endsWith('/*')) {
        this.prefixes.push({ prefix: normalizePath(endpoint.slice(0, -2)), endpoint });
      } else {
        this.exact.set(normalizePath(endpoint), endpoint);
      }
    }
    this.prefixes.sort((a, b) => b.prefix.length - a.prefix.length);
  }

  match(normalizedPath: string): string | null {
    const hit = this.exact.get(normalizedPath);
    if (hit !== undefined) return hit;
    for (const { prefix, endpoint } of this.prefixes) {
      if (
        normalizedPath === prefix ||
        prefix === '/' ||
        normalizedPath.startsWith(`${prefix}/`)
      ) {
        return endpoint;
      }
    }
    return null;
  }
}
