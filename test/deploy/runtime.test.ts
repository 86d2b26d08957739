// How the image runs Node (README "Memory and V8 flags"): jemalloc in place of glibc's malloc, and a larger
// young generation. Both were measured with `npm run bench`; both are lost silently if a later edit drops the
// preload's target or replaces NODE_OPTIONS without the image's flags, so they are held here.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { KUSTOMIZE_TARGETS, byKind, debianJemalloc, imageNodeOptions, imageRuntimeStage, kustomize, readYaml, type Obj } from './support/repo.js';

const runtime = imageRuntimeStage();
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
  const objects = kustomize(target);

  it("keeps the image's V8 flags where it replaces NODE_OPTIONS", () => {
    const configs = byKind(objects, 'ConfigMap').filter((c: Obj) => c.data?.NODE_OPTIONS !== undefined);
    expect(configs.length).toBeGreaterThan(0);
    for (const c of configs) {
      const flags = String(c.data.NODE_OPTIONS).split(' ');
      for (const f of nodeOptions) expect(flags, `${c.metadata.name} NODE_OPTIONS`).toContain(f);
    }
  });

  it("sets neither NODE_OPTIONS nor LD_PRELOAD on a container directly (env would override the ConfigMap's and the image's)", () => {
    for (const d of byKind(objects, 'Deployment')) {
      for (const c of d.spec.template.spec.containers as Obj[]) {
        const names = ((c.env ?? []) as Obj[]).map((e) => e.name);
        expect(names, `${d.metadata.name}/${c.name}`).not.toContain('NODE_OPTIONS');
        expect(names, `${d.metadata.name}/${c.name}`).not.toContain('LD_PRELOAD');
      }
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
    // V8's default young generation depends on the memory it sees (16 MB semi-spaces on a large machine, far
    // less in a small container), so the reference sets one explicitly.
    const reference = probe({ NODE_OPTIONS: '--max-semi-space-size=16' });
    const image = probe({ LD_PRELOAD: jemalloc!, NODE_OPTIONS: nodeOptions.join(' ') });
    expect(reference.jemalloc).toBe(false);
    expect(image.jemalloc).toBe(true);
    expect(image.buf).toBe(1 << 20);
    // V8 counts three semi-spaces of young generation in its heap limit: 3 x (32 - 16) MB more.
    expect(image.heapLimit - reference.heapLimit).toBe(3 * 16 * 2 ** 20);
  });
});
