// How the image runs Node (README "Memory and V8 flags"): jemalloc in place of glibc's malloc, and a larger
// young generation. Both were measured with `npm run bench`; both are lost silently if a later edit drops the
// preload's target or replaces NODE_OPTIONS without the image's flags, so they are held here.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { KUSTOMIZE_TARGETS, byKind, debianJemalloc, imageNodeOptions, kustomize, readYaml, repoPath, type Obj } from './support/repo.js';

const dockerfile = readFileSync(repoPath('Dockerfile'), 'utf8');
const runtime = dockerfile.slice(dockerfile.search(/^FROM \S+ AS runtime$/m));
const nodeOptions = imageNodeOptions();

describe('the image', () => {
  it('preloads jemalloc from the path its own install step links, and fails the build if there is nothing to link', () => {
    const preload = /^\s*LD_PRELOAD=(\S+)/m.exec(runtime)?.[1];
    expect(preload).toBe('/usr/local/lib/libjemalloc.so.2');
    expect(runtime).toMatch(/apt-get install [^\n]*\blibjemalloc2\b/);
    expect(runtime).toContain(`ln -s "$(dpkg -L libjemalloc2 | grep '/libjemalloc\\.so\\.2$')" ${preload}`);
    expect(runtime).toContain(`test -e ${preload}`);
  });

  it('sets a young generation of 32 MB for every node it starts', () => {
    expect(nodeOptions).toContain('--max-semi-space-size=32');
  });
});

describe.each(KUSTOMIZE_TARGETS)('%s', (target) => {
  it("keeps the image's V8 flags where it replaces NODE_OPTIONS", () => {
    const configs = byKind(kustomize(target), 'ConfigMap').filter((c: Obj) => c.data?.NODE_OPTIONS !== undefined);
    expect(configs.length).toBeGreaterThan(0);
    for (const c of configs) {
      const flags = String(c.data.NODE_OPTIONS).split(' ');
      for (const f of nodeOptions) expect(flags, `${c.metadata.name} NODE_OPTIONS`).toContain(f);
    }
  });
});

describe('docker compose', () => {
  it("leaves the image's NODE_OPTIONS and LD_PRELOAD alone", () => {
    const env = (readYaml('docker-compose.yml').services['usage-limiter'] as Obj).environment as Record<string, string>;
    expect(env.NODE_OPTIONS).toBeUndefined();
    expect(env.LD_PRELOAD).toBeUndefined();
  });
});

// The image's Node is Debian's node:20 with Debian's libjemalloc2. Where this machine has the same package,
// a Node started the image's way must map it, take the flags and run.
const jemalloc = debianJemalloc();

function probe(env: Record<string, string>): { jemalloc: boolean; heapLimit: number; buf: number } {
  const script =
    "const maps=require('fs').readFileSync('/proc/self/maps','utf8');" +
    "process.stdout.write(JSON.stringify({jemalloc:maps.includes('libjemalloc'),heapLimit:require('v8').getHeapStatistics().heap_size_limit,buf:Buffer.alloc(1<<20,1).length}))";
  return JSON.parse(execFileSync(process.execPath, ['-e', script], { env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8' }));
}

describe.skipIf(jemalloc === undefined || !existsSync(jemalloc))("Node under the image's allocator and flags", () => {
  it('maps jemalloc, takes the larger young generation from NODE_OPTIONS, and runs', () => {
    const plain = probe({});
    const image = probe({ LD_PRELOAD: jemalloc!, NODE_OPTIONS: nodeOptions.join(' ') });
    expect(plain.jemalloc).toBe(false);
    expect(image.jemalloc).toBe(true);
    expect(image.buf).toBe(1 << 20);
    // V8 reserves three semi-spaces' worth of young generation in its limit: 3 x (32 - 16) MB more.
    expect(image.heapLimit - plain.heapLimit).toBe(3 * 16 * 2 ** 20);
  });
});
