// tsc compiles TypeScript only; the Lua scripts are read at run time next to the compiled store code.
import { cpSync, readdirSync } from 'node:fs';
import path from 'node:path';

function copyLua(srcDir, outDir) {
  for (const entry of readdirSync(srcDir, { withFileTypes: true })) {
    const from = path.join(srcDir, entry.name);
    const to = path.join(outDir, entry.name);
    if (entry.isDirectory()) copyLua(from, to);
    else if (entry.name.endsWith('.lua')) cpSync(from, to);
  }
}
copyLua('src', 'dist');
